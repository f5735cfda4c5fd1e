"""The material of ``emoguide eval pipeline``: sessions with known clip edges, words and emotions.

Built from ``../shared/data`` only, deterministically (clips chosen by file name, fixed order), and cached
in a work folder keyed by the actors and clip count, with a ground-truth manifest (``manifest.json``):

* ``audio``: per RAVDESS actor, 15 clips joined with 1.5 s of silence (``synth.build_session``): the
  neutral clip, then the strong-intensity clips of calm and of every other emotion, both statements.
* ``dubbed``: per RAVDESS actor, a GRID speaker's neutral face lip-synced to 14 of the actor's clips
  (``synth.build_dubbed_session``): neutral and calm clips are congruent with the neutral face, strong
  happy, sad, angry and fearful ones are not.
* ``grid``: the GRID clips as they are; ``swwp2s.align`` gives the word times of ``id2_vcd_swwp2s``.

Each clip's speech span (the reference for boundaries and overlap) is the clip trimmed by energy (35 dB
under its loudest 25 ms frame, ``synth.speech_span``) for RAVDESS, and the hand-read span
(``synth.GRID_SPEECH_S``) for GRID. RAVDESS clips were cut to 2.39 s, so most end mid-sentence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synth import GRID_SPEECH_S, Turn, build_dubbed_session, build_session

from emoguide.dataio.media import probe
from emoguide.dataio.tables import open_atomic
from emoguide.evaluation.ravdess import RAVDESS_EMOTIONS
from emoguide.evaluation.textnorm import grid_sentence

# Bump when the material changes, so cached folders are rebuilt rather than reused.
MATERIAL_VERSION = 2
GAP_S = 1.5
STATEMENTS = {"01": "kids are talking by the door", "02": "dogs are sitting by the door"}
RAVDESS_NAMES = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
                 "07": "disgust", "08": "surprised"}
# (emotion code, intensity code) per statement, in session order; every statement runs through them in turn,
# so neighbouring clips never share an emotion. Neutral has no strong intensity in RAVDESS.
AUDIO_CLIPS = [("01", "01"), *((e, "02") for e in ("02", "03", "04", "05", "06", "07", "08"))]
AUDIO_NEUTRAL_STATEMENTS = ("01",)  # "the neutral clip": one, so that 15 clips make the session
DUBBED_CLIPS = [("01", "01"), ("02", "01"), ("02", "02"), ("03", "02"), ("04", "02"), ("05", "02"), ("06", "02")]
CONGRUENT = {"01", "02"}  # neutral and calm voices go with a neutral face
ALIGNED_GRID = "id2_vcd_swwp2s"
ALIGN_UNITS_PER_S = 25_000.0


def ravdess_clip(folder: Path, actor: int, emotion: str, intensity: str, statement: str) -> Path | None:
    """The actor's first repetition of that clip (the second where the first is absent), or None."""
    for repetition in ("01", "02"):
        path = folder / f"Actor_{actor:02d}" / f"03-01-{emotion}-{intensity}-{statement}-{repetition}-{actor:02d}.flac"
        if path.exists():
            return path
    return None


def _choose(folder: Path, actor: int, plan: list[tuple[str, str]], max_clips: int | None,
            neutral_statements: tuple[str, ...] = tuple(STATEMENTS)) -> list[Path]:
    """The actor's clips for a session plan, statement by statement, capped at ``max_clips``."""
    chosen = [ravdess_clip(folder, actor, e, i, s) for s in STATEMENTS for e, i in plan
              if e != "01" or s in neutral_statements]
    return [p for p in chosen if p is not None][:max_clips]


def _ravdess_truth(turn: Turn, path: Path, dubbed: bool) -> dict[str, Any]:
    _, _, emotion, intensity, statement, _, _ = path.stem.split("-")
    row = {"source": path.name, "start_s": turn.start_s, "end_s": turn.end_s,
           "speech_start_s": float(turn.speech_start_s), "speech_end_s": float(turn.speech_end_s),
           "emotion": RAVDESS_EMOTIONS[emotion], "ravdess_emotion": RAVDESS_NAMES[emotion],
           "intensity": "strong" if intensity == "02" else "normal", "statement": STATEMENTS[statement],
           "truncated": True}
    return row | ({"congruent": emotion in CONGRUENT} if dubbed else {})


def read_align(path: Path) -> list[dict[str, Any]]:
    """GRID word alignment (start end word, in 1/25,000 s), silences left out: [{start, end, word}]."""
    words = []
    for line in path.read_text().split("\n"):
        fields = line.split()
        if len(fields) == 3 and fields[2] != "sil":
            words.append({"start": int(fields[0]) / ALIGN_UNITS_PER_S, "end": int(fields[1]) / ALIGN_UNITS_PER_S,
                          "word": fields[2]})
    return words


def face_for(grid: Path, actor: int) -> Path:
    """The GRID face an actor's voice is dubbed onto: the clips taken in turn, by actor number."""
    faces = sorted(grid.glob("*.mpg"))
    return faces[actor % len(faces)]


def _grid_sessions(grid: Path) -> list[dict[str, Any]]:
    sessions = []
    for clip in sorted(grid.glob("*.mpg")):
        start, end = GRID_SPEECH_S[clip.name]
        truth = {"source": clip.name, "start_s": 0.0, "end_s": probe(clip).duration_s,
                 "speech_start_s": start, "speech_end_s": end,
                 "emotion": "neutral", "statement": " ".join(grid_sentence(clip.stem)), "truncated": False,
                 "congruent": True}
        align = grid / f"{clip.stem.split('_')[-1]}.align"
        if align.exists():
            truth["words"] = read_align(align)
        sessions.append({"session_id": f"grid_{clip.stem}", "kind": "grid", "actor": None, "path": str(clip),
                         "clips": [truth]})
    return sessions


def build_material(data: Path, actors: list[int], work: Path, max_clips: int | None = None) -> dict[str, Any]:
    """Build (or reuse) every session for ``actors`` under ``work``; return the manifest.

    The manifest lists sessions (``session_id``, ``kind``: audio | dubbed | grid, ``actor``, ``path``) and
    per session its clips: span in the session, speech span, emotion (7 classes, calm → neutral), the
    statement, and for dubbed and GRID clips whether face and voice are ``congruent``.
    """
    ravdess, grid = data.resolve() / "ravdess", data.resolve() / "grid"
    for needed in (ravdess, grid):
        if not needed.is_dir():
            raise FileNotFoundError(f"{needed}: missing (the eval pipeline builds its sessions from ../shared/data)")
    key = f"v{MATERIAL_VERSION}_actors-{'-'.join(map(str, actors))}_clips-{max_clips or 'all'}"
    folder = work / key
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        return json.loads(manifest_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    sessions = []
    for actor in actors:
        voices = _choose(ravdess, actor, AUDIO_CLIPS, max_clips, AUDIO_NEUTRAL_STATEMENTS)
        if not voices:
            raise FileNotFoundError(f"{ravdess}/Actor_{actor:02d}: no RAVDESS clips for actor {actor}")
        turns = build_session([("actor", p) for p in voices], folder / f"audio_{actor:02d}.flac", gap_s=GAP_S)
        sessions.append({"session_id": f"audio_{actor:02d}", "kind": "audio", "actor": actor,
                         "path": str(folder / f"audio_{actor:02d}.flac"),
                         "clips": [_ravdess_truth(t, p, False) for t, p in zip(turns, voices, strict=True)]})
        voices = _choose(ravdess, actor, DUBBED_CLIPS, max_clips)
        face = face_for(grid, actor)
        turns = build_dubbed_session(voices, face, folder / f"dubbed_{actor:02d}.mp4", gap_s=GAP_S)
        sessions.append({"session_id": f"dubbed_{actor:02d}", "kind": "dubbed", "actor": actor, "face": face.name,
                         "path": str(folder / f"dubbed_{actor:02d}.mp4"),
                         "clips": [_ravdess_truth(t, p, True) for t, p in zip(turns, voices, strict=True)]})
    manifest = {"version": MATERIAL_VERSION, "folder": str(folder.resolve()), "actors": actors,
                "max_clips": max_clips, "gap_s": GAP_S,
                "speech_span": "RAVDESS: energy within 35 dB of the clip's loudest 25 ms frame; GRID: read by hand",
                "sessions": sessions + _grid_sessions(grid)}
    with open_atomic(manifest_path, "w") as fh:
        json.dump(manifest, fh, indent=1)
    return manifest

