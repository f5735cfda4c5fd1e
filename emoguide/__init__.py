"""emoguide's application logic, free of Ray: what :mod:`ray_jobs` runs on each row, chunk or session.

Subpackages, lowest layer first (see docs/ARCHITECTURE.md for what each may import):

* :mod:`emoguide.dataio`: media decoding, session inputs, storage URIs, Parquet tables (the contract).
* :mod:`emoguide.session`: per-session reduction: utterances, speakers' roles, whose face is whose,
  dissonance, redaction.
* :mod:`emoguide.prompts`: prompt templates and the conditions they build.
* :mod:`emoguide.evaluation`: perception, pipeline, judge, reference metrics, agreement, ratings, AnnoMI.
* :mod:`emoguide.report`: the static HTML report.
"""
