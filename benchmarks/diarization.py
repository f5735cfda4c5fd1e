"""Diarization error rate and face attribution through the whole pipeline, on sessions built from real clips.

    python benchmarks/diarization.py [--out benchmarks/results/diarization.json]

Sessions (built under a temp folder, then processed by ``emoguide run --no-generate``, once with the
speaker count estimated and once with ``--min-speakers 2``):

* RAVDESS conversations, audio only: two actors alternate, four turns of three sentences each (0.3 s
  between clips), mixed-sex and same-sex pairs;
* GRID two-person videos: two of the 8 GRID speakers side by side (``synth.build_two_person_session``),
  eight alternating turns; the listener's face stays on screen. GRID has one clip per speaker, so each
  speaker repeats their sentence.

Reference: each clip's speech span, labelled with the clip's speaker: for GRID the span read by hand
from each clip's spectrogram (``synth.GRID_SPEECH_S``), for RAVDESS the clip trimmed by energy
(35 dB under its peak, ``synth.speech_span``: studio recordings, though a loud breath before a sentence
counts as speech there). Hypothesis: the run's ``sessions.speaker_turns``. DER is reported without a
collar and with NIST's 0.25 s collar, next to the word-level diarization error (WDER), which leaves out
where speech starts and stops and counts only who said each word. For the videos it also records
whether each speaker got the face of their own panel (audio-visual synchrony, ``emoguide/session/face_tracks.py``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from synth import Turn, build_session, build_two_person_session  # noqa: E402

from emoguide.evaluation.der import diarization_error_rate  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RAVDESS_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (1, 3), (2, 4), (5, 7), (6, 8)]  # mixed sex, then same sex
GRID_PAIRS = [("bbaf2n", "lrwp9a"), ("id2_vcd_swwp2s", "brbk7n"), ("sbia1a", "lbax4n"), ("lbbc2a", "sbwe5n")]


def build(folder: Path) -> dict[str, tuple[str, list[Turn]]]:
    """Write every session into ``folder``; return session id → (group, reference turns)."""
    sessions: dict[str, tuple[str, list[Turn]]] = {}
    for a, b in RAVDESS_PAIRS:
        clips = {k: sorted((DATA / "ravdess" / f"Actor_{k:02d}").glob("*.flac"))[::5][:12] for k in (a, b)}
        conversation = []
        for k in range(4):
            conversation += [(f"A{a}", p) for p in clips[a][3 * k: 3 * k + 3]]
            conversation += [(f"A{b}", p) for p in clips[b][3 * k: 3 * k + 3]]
        sid = f"ravdess_{a:02d}_{b:02d}"
        group = "RAVDESS mixed-sex" if a % 2 != b % 2 else "RAVDESS same-sex"
        sessions[sid] = (group, build_session(conversation, folder / f"{sid}.flac", gap_s=0.3))
    for left, right in GRID_PAIRS:
        sid = f"grid_{left[:6]}_{right[:6]}"
        people = {"left": DATA / "grid" / f"{left}.mpg", "right": DATA / "grid" / f"{right}.mpg"}
        sessions[sid] = ("GRID two-person video", build_two_person_session(people, ["left", "right"] * 4,
                                                                           folder / f"{sid}.mp4"))
    return sessions


def turns_of(session: dict) -> list[tuple[float, float, str]]:
    """The run's diarization of a session: its ``speaker_turns``."""
    return [(t["start_s"], t["end_s"], t["speaker"]) for t in session["speaker_turns"]]


def word_error_share(turns: list[Turn], utterances: list[dict]) -> float:
    """Word-level diarization error (WDER): the share of output words, inside a reference turn, whose
    speaker is not the one the best speaker mapping gives that turn's speaker. Unlike DER it ignores where
    speech starts and stops (the ASR's word timings) and measures only who said each word."""
    from collections import Counter

    pairs = []
    for u in utterances:
        for w in u["words"]:
            mid = (w["start"] + w["end"]) / 2
            ref = next((t.speaker for t in turns if t.start_s <= mid <= t.end_s), None)
            if ref is not None:
                pairs.append((ref, u["speaker"]))
    if not pairs:
        return float("nan")
    counts = Counter(pairs)
    mapping, used = {}, set()
    for (ref, hyp), _ in counts.most_common():
        if ref not in mapping and hyp not in used:
            mapping[ref] = hyp
            used.add(hyp)
    return sum(n for (ref, hyp), n in counts.items() if mapping.get(ref) != hyp) / len(pairs)


def face_check(turns: list[Turn], utterances: list[dict], record: dict) -> bool:
    """Did every speaker get the person whose panel (left or right) they speak in?"""
    centre = {p["person"]: (p["box"][0] + p["box"][2]) / 2 for p in record["people"]}
    for side in ("left", "right"):
        spans = [(t.start_s, t.end_s) for t in turns if t.speaker == side]
        labels = {u["speaker"] for u in utterances if any(a <= (u["start_s"] + u["end_s"]) / 2 <= b for a, b in spans)}
        if len(labels) != 1:
            return False
        person = record["speakers"].get(labels.pop(), {}).get("person")
        if person is None or (centre[person] < 0.5) != (side == "left"):
            return False
    return True


# Each run of the sessions: the speaker count estimated (the default), and told that a session has at
# least two speakers (``--min-speakers 2``), as a therapy session always has.
RUNS = {"count estimated": [], "min-speakers 2": ["--min-speakers", "2"]}


def run_sessions(inputs: Path, run_dir: Path, extra: list[str]) -> tuple[dict, list[dict], float]:
    """One ``emoguide run --no-generate`` over every session: (sessions by id, utterances, wall seconds)."""
    started = time.monotonic()
    exe = Path(sys.executable).with_name("emoguide")
    proc = subprocess.run([str(exe), "run", str(inputs), "--out", str(run_dir), "--no-generate", "-q", *extra],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"emoguide run failed:\n{proc.stderr[-3000:]}")
    rows = {r["session_id"]: r for r in pq.read_table(run_dir / "sessions.parquet").to_pylist()}
    return rows, pq.read_table(run_dir / "utterances.parquet").to_pylist(), time.monotonic() - started


def score(sessions: dict[str, tuple[str, list[Turn]]], rows: dict, utterances: list[dict]) -> tuple[list, dict]:
    """Per-session scores and per-group summary of one run."""
    results = []
    for sid, (group, turns) in sessions.items():
        utts = [u for u in utterances if u["session_id"] == sid]
        reference = [(t.speech_start_s, t.speech_end_s, t.speaker) for t in turns]
        entry = {"session": sid, "group": group, "n_speakers": rows[sid]["n_speakers"],
                 "der": diarization_error_rate(reference, turns_of(rows[sid])),
                 "der_collar_0.25": diarization_error_rate(reference, turns_of(rows[sid]), collar_s=0.25),
                 "wder": word_error_share(turns, utts)}
        if sid.startswith("grid_"):
            entry["faces_correct"] = face_check(turns, utts, json.loads(rows[sid]["face_attribution"]))
        results.append(entry)
    summary = {}
    for group in dict.fromkeys(r["group"] for r in results):
        sel = [r for r in results if r["group"] == group]
        row = {"sessions": len(sel), "speaker_count_correct": sum(r["n_speakers"] == 2 for r in sel)}
        for key in ("der", "der_collar_0.25"):
            total = sum(r[key]["total_s"] for r in sel)
            for term in ("der", "miss", "false_alarm", "confusion"):
                row[f"{key}.{term}" if term != "der" else key] = round(
                    sum(r[key][term] * r[key]["total_s"] for r in sel) / total, 4)
        row["wder"] = round(float(np.mean([r["wder"] for r in sel])), 4)
        if group.startswith("GRID"):
            row["faces_correct"] = sum(r["faces_correct"] for r in sel)
        summary[group] = row
    return results, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "diarization.json")
    args = parser.parse_args()
    report = {"measured": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{__import__('os').cpu_count()} cores", "runs": {}}
    with tempfile.TemporaryDirectory(prefix="emoguide-der-") as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        sessions = build(inputs)
        for name, extra in RUNS.items():
            rows, utterances, wall = run_sessions(inputs, Path(tmp) / name.replace(" ", "_"), extra)
            results, summary = score(sessions, rows, utterances)
            report["runs"][name] = {"options": extra, "pipeline_wall_s": round(wall, 1), "summary": summary,
                                    "sessions": results}
            print(f"-- {name}")
            for group, row in summary.items():
                print(f"{group:24} n={row['sessions']} count ok {row['speaker_count_correct']}/{row['sessions']}  "
                      f"DER {100 * row['der']:.1f}% (miss {100 * row['der.miss']:.1f}, "
                      f"FA {100 * row['der.false_alarm']:.1f}, conf {100 * row['der.confusion']:.1f})  "
                      f"collar 0.25: {100 * row['der_collar_0.25']:.1f}%  WDER {100 * row['wder']:.1f}%"
                      + (f"  faces {row['faces_correct']}/{row['sessions']}" if "faces_correct" in row else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
