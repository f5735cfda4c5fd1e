"""Evaluation: perception (RAVDESS, faces), the pipeline against known material, DER, the LLM judge and
its rubrics, reference metrics, AnnoMI validation, agreement across conditions, human ratings."""
