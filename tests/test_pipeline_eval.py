"""`emoguide eval pipeline`: its metrics on hand-made tables, its material on real data, and one real run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import DATA, data_path
from emoguide.evaluation import pipeline_eval as pe
from emoguide.evaluation.textnorm import matched_words, prefix_wer
from models.emotion import LABELS

STATEMENT = "kids are talking by the door"


def _probs(label: str, p: float = 0.9) -> list[float]:
    out = [(1 - p) / (len(LABELS) - 1)] * len(LABELS)
    out[LABELS.index(label)] = p
    return out


def _words(text: str, start: float, step: float = 0.2) -> list[dict]:
    return [{"start": start + k * step, "end": start + k * step + 0.15, "word": f" {w}", "probability": 0.9}
            for k, w in enumerate(text.split())]


def _utt(start: float, end: float, text: str = "", **columns) -> dict:
    return {"start_s": start, "end_s": end, "words": _words(text, start), "voice_probs": None,
            "dissonance": None} | columns


def _clip(start: float, end: float, emotion: str = "neutral", congruent: bool | None = None) -> dict:
    return {"source": f"clip{start}", "start_s": start - 1.0, "end_s": end + 0.2, "speech_start_s": start,
            "speech_end_s": end, "emotion": emotion, "statement": STATEMENT, "truncated": True,
            "congruent": congruent}


# -- boundaries ----------------------------------------------------------------------------------------


def test_boundaries_match_one_to_one_within_the_tolerance() -> None:
    truth = [(1.0, 2.0), (4.0, 5.0), (8.0, 9.0)]
    utterances = [(1.1, 2.4), (1.0, 2.0), (3.9, 9.1), (8.45, 9.55)]
    # (1.0, 2.0) goes to the exact utterance, not the looser one; the merged (3.9, 9.1) fits nothing;
    # (8.45, 9.55) misses by 0.55 s at its end.
    assert pe.match_boundaries(truth, utterances) == [1, None, None]
    assert pe.match_boundaries(truth, utterances, tol_s=0.6) == [1, None, 3]
    assert pe.prf(1, 3, 4) == pytest.approx({"precision": 0.25, "recall": 1 / 3, "f1": 2 / 7, "n_clips": 3,
                                             "n_utterances": 4, "n_matched": 1})
    assert pe.prf(0, 3, 0)["f1"] == 0.0


# -- words -------------------------------------------------------------------------------------------


def test_prefix_wer_forgives_the_cut_but_not_invented_words() -> None:
    ref = STATEMENT.split()
    assert prefix_wer(ref, ["kids", "are", "talking"]) == (0, 3)  # cut after three words: no error
    assert prefix_wer(ref, ["kids", "are", "walking"]) == (1, 3)
    assert prefix_wer(ref, []) == (6, 6)  # nothing heard: every word missed
    loop = "kids are talking " * 3
    errors, n = prefix_wer(ref, loop.split())
    assert n == 6 and errors / n >= 0.5  # a repetition loop is charged against the whole statement


def test_words_in_a_pause_belong_to_the_nearest_clip_and_count_as_hallucination() -> None:
    clips = [_clip(1.0, 2.4), _clip(4.0, 5.4)]
    assert pe.clip_regions(clips)[0] == (-math.inf, 3.2)
    # the second utterance repeats the sentence into the pause after the second clip
    utterances = [_utt(1.0, 2.2, "kids are talking by the door"),
                  _utt(4.0, 7.0)]
    utterances[1]["words"] = _words("kids are talking by the door kids are talking by the door", 4.0, step=0.25)
    per_clip = pe.words_by_clip(clips, utterances)
    assert [len(w) for w in per_clip] == [6, 12]
    first, second = (pe.text_score(c, w) for c, w in zip(clips, per_clip, strict=True))
    assert first["errors"] == 0 and first["hyp_words"] == 6 and first["edge_errors_s"][0] == pytest.approx(0.0)
    assert second["hyp_words"] / second["statement_words"] == 2.0
    assert second["errors"] == 6  # six inserted words
    summary = pe.summarise([first | _NOVOICE, second | _NOVOICE], [(1, 2, 2)])
    assert summary["words_per_ref_word"] == pytest.approx(18 / 12)
    assert summary["wer"] == pytest.approx(6 / 12)


_NOVOICE = {"emotion": "neutral", "voice": pe.NO_VALUE, "congruent": None, "dissonance": None,
            "dissonance_reason": None}


def test_word_time_error_on_aligned_words() -> None:
    reference = [{"start": 0.5, "end": 0.8, "word": "set"}, {"start": 0.8, "end": 1.1, "word": "white"},
                 {"start": 1.1, "end": 1.3, "word": "with"}]
    heard = [{"start": 0.6, "end": 0.8, "word": " Set"}, {"start": 0.9, "end": 1.0, "word": " wide"},
             {"start": 1.1, "end": 1.5, "word": " with"}]
    assert matched_words(["set", "white", "with"], ["set", "wide", "with"]) == [(0, 0), (2, 2)]
    err = pe.word_time_error(reference, heard)
    assert err["n_words"] == 2 and err["n_reference"] == 3
    assert err["start_s"] == pytest.approx(0.05) and err["end_s"] == pytest.approx(0.1)
    shifted = pe.word_time_error(reference, heard, offset_s=0.1)  # the clip starts 0.1 s into the session
    assert shifted["start_s"] == pytest.approx(0.05) and shifted["end_s"] == pytest.approx(0.1)
    assert pe.word_time_error(reference, [])["start_s"] is None


# -- voice -------------------------------------------------------------------------------------------


def test_voice_label_is_the_overlap_weighted_vote() -> None:
    span = (1.0, 3.0)
    long_sad = _utt(0.5, 2.5, voice_probs=_probs("sadness", 0.6))  # 1.5 s of overlap
    short_angry = _utt(2.5, 4.0, voice_probs=_probs("anger", 0.9))  # 0.5 s
    assert pe.voice_label(span, [long_sad, short_angry]) == "sadness"
    assert pe.voice_label(span, [_utt(0.5, 1.2, voice_probs=_probs("sadness")), short_angry]) == "anger"
    assert pe.voice_label(span, [_utt(1.0, 3.0)]) == pe.NO_VALUE  # null voice_probs
    assert pe.voice_label(span, [_utt(5.0, 6.0, voice_probs=_probs("anger"))]) == pe.NO_VALUE  # no overlap


def test_voice_summary_counts_missing_values_as_wrong() -> None:
    truth = ["neutral", "anger", "sadness", "fear"]
    predicted = ["neutral", "anger", pe.NO_VALUE, "contempt"]  # contempt is never right for RAVDESS
    v = pe.voice_summary(truth, predicted)
    assert v["accuracy"] == 0.5 and v["accuracy_scored"] == pytest.approx(2 / 3)
    assert v["n_no_value"] == 1 and v["n_clips"] == 4
    assert v["macro_f1"] == pytest.approx(2 / 7)  # perfect on two of the seven classes
    assert sum(map(sum, v["confusion"])) == 4 and v["confusion"][pe.CLASSES.index("sadness")][-1] == 1


# -- dissonance --------------------------------------------------------------------------------------


def test_dissonance_takes_the_most_overlapping_utterance_with_a_value() -> None:
    span = (1.0, 3.0)
    assert pe.dissonance_of(span, [_utt(0.0, 2.8, dissonance=True), _utt(2.8, 4, dissonance=False)]) == (True, None)
    # the utterance covering most of the clip has no value: the next one with a value decides
    assert pe.dissonance_of(span, [_utt(0.0, 2.8), _utt(2.8, 4, dissonance=False)]) == (False, None)
    assert pe.dissonance_of(span, [_utt(0.0, 2.8)]) == (None, "null dissonance")
    reasoned = _utt(0.0, 2.8, dissonance_reason="voice not confident")
    assert pe.dissonance_of(span, [reasoned]) == (None, "voice not confident")
    assert pe.dissonance_of(span, [_utt(5, 6, dissonance=True)]) == (None, "no utterance")


def test_dissonance_rates_are_over_clips_with_a_value() -> None:
    congruent = [True, True, True, False, False, False, False]
    values = [False, True, None, True, False, None, None]
    reasons = [None, None, "no utterance", None, None, "face missing", "face missing"]
    d = pe.dissonance_summary(congruent, values, reasons)
    assert d["false_alarm_rate"] == 0.5 and d["n_congruent_scored"] == 2 and d["n_congruent"] == 3
    assert d["hit_rate"] == 0.5 and d["n_incongruent_scored"] == 2 and d["n_incongruent"] == 4
    assert d["null_share"] == pytest.approx(3 / 7)
    assert d["null_reasons"] == {"no utterance": 1, "face missing": 2}
    assert pe.dissonance_summary([True], [None], ["x"])["false_alarm_rate"] is None


# -- a whole run -------------------------------------------------------------------------------------


def test_score_run_on_hand_made_tables() -> None:
    clips = [_clip(1.0, 2.4, "anger", False), _clip(4.0, 5.4, "neutral", True)]
    manifest = {"actors": [13], "sessions": [
        {"session_id": "dubbed_13", "kind": "dubbed", "actor": 13, "clips": clips},
        {"session_id": "audio_13", "kind": "audio", "actor": 13,
         "clips": [{k: v for k, v in c.items() if k != "congruent"} for c in clips]}]}
    sessions = [{"session_id": "dubbed_13", "status": "ok"}, {"session_id": "audio_13", "status": "failed"}]
    utterances = [
        _utt(1.0, 2.2, "kids are talking", session_id="dubbed_13", voice_probs=_probs("anger"), dissonance=True),
        _utt(4.1, 5.3, "kids are talking by the", session_id="dubbed_13", voice_probs=_probs("sadness"),
             dissonance=False),
        _utt(1.0, 2.2, "kids", session_id="audio_13", voice_probs=_probs("anger")),  # of a failed session
    ]
    utterances[1]["asr_flags"] = ["repetition", "dropped"]
    report = pe.score_run(manifest, sessions, utterances)
    dubbed, audio = report["totals"]["dubbed"], report["totals"]["audio"]
    assert dubbed["boundary"]["f1"] == 1.0 and dubbed["wer"] == 0.0
    assert dubbed["voice"]["accuracy"] == 0.5
    assert dubbed["dissonance"]["hit_rate"] == 1.0 and dubbed["dissonance"]["false_alarm_rate"] == 0.0
    assert audio["boundary"]["recall"] == 0.0 and audio["voice"]["n_no_value"] == 2 and audio["wer"] == 1.0
    assert "dissonance" not in audio
    assert report["sessions_not_ok"] == {"audio_13": "failed"}
    assert report["per_actor"]["13"]["dubbed"]["voice"]["accuracy"] == 0.5
    assert len(report["clips"]) == 4
    md = pe.to_markdown({"actors_spec": "13", "split": pe.split_name([13]), "measured": "today", "machine": "m",
                         "pipeline_wall_s": 1.0, "media_s": 2.0, "boundary_tolerance_s": 0.5, **report})
    assert "| dissonance hits (incongruent) | 1.00 (1 of 1) |" in md and "report split" in md
    assert "Sessions not ok" in md and "audio_13" in md
    assert dubbed["asr_flags"] == {"repetition": 1, "dropped": 1} and audio["asr_flags"] == {}
    assert "| ASR flags raised (utterances) | dropped: 1, repetition: 1 |" in md
    assert pe.asr_flags([{"asr_flags": "loop"}, {"asr_flags": None}, {}]) == {"loop": 1}


def test_split_names() -> None:
    assert pe.split_name([13, 18]) == "report split"
    assert pe.split_name(range(1, 13)) == "train/tune split"
    assert "mixed" in pe.split_name([12, 13])


# -- material ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> dict:
    data_path("ravdess", "Actor_14")
    data_path("grid", "swwp2s.align")
    from pipeline_material import build_material

    return build_material(DATA, [14], tmp_path_factory.mktemp("material"), max_clips=4)


def test_clip_choice_follows_the_plan() -> None:
    folder = data_path("ravdess")
    from pipeline_material import AUDIO_CLIPS, AUDIO_NEUTRAL_STATEMENTS, DUBBED_CLIPS, _choose

    audio = [p.name.split("-") for p in _choose(folder, 15, AUDIO_CLIPS, None, AUDIO_NEUTRAL_STATEMENTS)]
    dubbed = [p.name.split("-") for p in _choose(folder, 15, DUBBED_CLIPS, None)]
    assert len(audio) == 15 and len(dubbed) == 14
    assert sum(f[2] == "01" for f in audio) == 1  # one neutral clip
    assert all(f[3] == "02" for f in audio if f[2] != "01")  # every other emotion at strong intensity
    assert {f[2] for f in audio} == {f"0{k}" for k in range(1, 9)}
    assert {f[2] for f in dubbed} == {"01", "02", "03", "04", "05", "06"}
    assert all(a[2] != b[2] for a, b in zip(audio, audio[1:]))  # neighbours never share an emotion


def _rms_db(audio: np.ndarray, a: float, b: float) -> float:
    piece = audio[int(a * 16000): int(b * 16000)]
    return float(20 * np.log10(np.sqrt(np.mean(piece ** 2)) + 1e-9))


def test_audio_session_has_silence_between_clips_and_speech_inside(material: dict) -> None:
    from synth import _clip

    session = next(s for s in material["sessions"] if s["kind"] == "audio")
    clips = session["clips"]
    audio = _clip(session["path"])[1]
    assert len(clips) == 4 and len(audio) / 16000 == pytest.approx(clips[-1]["end_s"] + 1.5, abs=0.01)
    for clip, after in zip(clips, clips[1:]):
        assert after["start_s"] - clip["end_s"] == pytest.approx(1.5, abs=0.001)
        assert _rms_db(audio, clip["end_s"] + 0.05, after["start_s"] - 0.05) < -90  # the gap is silent
    for clip in clips:
        assert clip["start_s"] <= clip["speech_start_s"] < clip["speech_end_s"] <= clip["end_s"]
        assert _rms_db(audio, clip["speech_start_s"], clip["speech_end_s"]) > -60
        assert clip["statement"] in {STATEMENT, "dogs are sitting by the door"}
    assert [c["emotion"] for c in clips] == ["neutral", "neutral", "happiness", "sadness"]  # calm is neutral


def test_dubbed_video_is_lip_synced(material: dict) -> None:
    from emoguide.dataio.media import probe
    from synth import _clip

    session = next(s for s in material["sessions"] if s["kind"] == "dubbed")
    info = probe(session["path"])
    assert info.has_audio and info.has_video and info.fps == pytest.approx(25.0)
    assert (info.width, info.height) == (360, 288)
    frames, audio = _clip(session["path"])
    clips = session["clips"]
    duration = clips[-1]["end_s"] + 1.5
    assert len(audio) / 16000 == pytest.approx(duration, abs=0.1) and len(frames) == pytest.approx(duration * 25, abs=2)
    assert [c["congruent"] for c in clips] == [True, True, True, False]  # neutral, calm, strong calm, strong happy
    motion = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    for clip, after in zip(clips, clips[1:]):
        silent = motion[int(clip["end_s"] * 25) + 2: int(after["speech_start_s"] * 25) - 2]
        assert np.median(silent) < 0.1  # the rest frame is held: only coding noise at key frames
    for clip in clips:
        speaking = motion[int(clip["speech_start_s"] * 25) + 1: int(clip["speech_end_s"] * 25) - 1]
        assert np.median(speaking) > 1.0  # the face moves while the voice speaks
        assert _rms_db(audio, clip["speech_start_s"], clip["speech_end_s"]) > -60


def test_grid_sessions_carry_their_sentences_and_alignment(material: dict) -> None:
    grid = {s["session_id"]: s["clips"][0] for s in material["sessions"] if s["kind"] == "grid"}
    assert len(grid) == 8 and grid["grid_bbaf2n"]["statement"] == "bin blue at f two now"
    words = grid["grid_id2_vcd_swwp2s"]["words"]
    assert [w["word"] for w in words] == "set white with p two soon".split()
    assert words[0]["start"] == pytest.approx(0.49) and words[-1]["end"] == pytest.approx(2.21)


def test_material_is_cached_and_deterministic(material: dict, tmp_path) -> None:
    from pipeline_material import build_material

    again = build_material(DATA, [14], tmp_path, max_clips=4)
    strip = lambda m: [{k: v for k, v in s.items() if k != "path"} for s in m["sessions"]]  # noqa: E731
    assert strip(again) == strip(material)
    assert build_material(DATA, [14], tmp_path, max_clips=4) == again  # read back from the cache


# -- end to end --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_eval_pipeline_end_to_end(tmp_path) -> None:
    data_path("ravdess", "Actor_14")
    data_path("grid")
    from ray_jobs.cli import main

    out = tmp_path / "report"
    assert main(["eval", "pipeline", "--data", str(DATA), "--actors", "14", "--max-clips", "7",
                 "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    report = json.loads((out / "pipeline.json").read_text())
    assert "| boundary F1" in (out / "pipeline.md").read_text()
    assert report["split"] == "report split" and report["actors"] == [14] and not report["sessions_not_ok"]
    assert set(report["totals"]) == {"audio", "dubbed", "grid"} and set(report["per_actor"]) == {"14"}
    audio, dubbed, grid = (report["totals"][k] for k in ("audio", "dubbed", "grid"))
    assert audio["clips"] == 7 and dubbed["clips"] == 7 and grid["clips"] == 8
    for group in (audio, dubbed, grid):
        assert 0 <= group["boundary"]["f1"] <= 1 and group["boundary"]["n_utterances"] >= 1
        assert group["wer"] >= 0 and group["words_per_ref_word"] > 0.3  # the pipeline hears words
        assert 0 <= group["voice"]["accuracy"] <= group["voice"]["accuracy_scored"] <= 1
    assert grid["wer"] < 0.5  # GRID is clean read speech
    d = dubbed["dissonance"]
    assert d["n_congruent"] == 3 and d["n_incongruent"] == 4 and 0 <= d["null_share"] <= 1
    assert 0 <= grid["word_time_error"]["start_s"] < 0.5 and grid["word_time_error"]["n_words"] >= 4
    assert len(report["clips"]) == 22
