"""Measure speaker diarization (models/speakers/) on real speech: DER, speaker count, speed.

Conditions (audio only; reference speech = each clip's energy-trimmed speech span, labelled with the
clip's speaker, which the construction knows):

* RAVDESS two-speaker conversations: two actors alternate (10-20 turns, 0.2-0.8 s gaps, random
  clips of all emotions), mixed-sex and same-sex pairs, several random seeds;
* GRID two-speaker "video": the 8 bundled GRID clips are 8 different people (checked by eye on the
  frames, and their embeddings); each of two speakers' clips is cut in two at its quietest point
  and the halves interleave A1 B1 A2 B2;
* single-speaker check: one actor alone for 16 turns must come out as ONE speaker;
* calibration (--calibrate): clustering of one actor's windows (all 8
  emotions) and two actors, over 300 simulated sessions: the speaker count per threshold, which
  is what ``CAMPP_DISTANCE_THRESHOLD`` is set from.

Windows come from oracle speech regions (the construction's trimmed clip spans, cut into 0.3 s
pseudo-words) by default; ``--asr`` also runs the offline faster-whisper model and uses its word
timings (then DER also counts missed speech and false alarms from the ASR's word spans).
DER: frame-level (10 ms), no collar, overlap scored, optimal speaker mapping (Hungarian), computed
by ``emoguide.evaluation.der.diarization_error_rate``. Nothing is written; a table is printed.

    python scripts/diarize_der.py [--seeds 5] [--asr] [--calibrate]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"

import itertools

from emoguide.evaluation.der import diarization_error_rate
from models.registry import resolve
from models.speakers.clustering import assign_words, cluster_speakers
from models.speakers.embedders import SpeakerEmbedder
from models.speakers.windows import cut_windows, speech_windows
from ray_jobs.config import UtterancesConfig

sys.path.insert(0, str(REPO / "benchmarks"))
from synth import speech_span  # noqa: E402

SR = 16_000


def load_flac(path: Path) -> np.ndarray:
    import soundfile as sf

    wav, sr = sf.read(str(path), dtype="float32", always_2d=False)
    assert sr == SR, (path, sr)
    return wav if wav.ndim == 1 else wav.mean(axis=1)


def ravdess_clips(actor: int) -> list[Path]:
    return sorted((DATA / "ravdess" / f"Actor_{actor:02d}").glob("*.flac"))


def build_conversation(
    turns: list[tuple[str, np.ndarray]], rng: np.random.Generator, gap_s: tuple[float, float] = (0.2, 0.8)
) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Concatenate speech spans of clips with random gaps; reference turns (start, end, speaker)."""
    pieces, ref, t = [], [], 0.0
    for spk, wav in turns:
        a, b = (round(x * SR) for x in speech_span(wav))
        seg = wav[a:b]
        gap = np.zeros(int(rng.uniform(*gap_s) * SR), dtype=np.float32)
        pieces += [gap, seg]
        t += len(gap) / SR
        ref.append((t, t + len(seg) / SR, spk))
        t += len(seg) / SR
    pieces.append(np.zeros(int(0.5 * SR), dtype=np.float32))
    return np.concatenate(pieces).astype(np.float32), ref


def pseudo_words(ref: list[tuple[float, float, str]], word_s: float = 0.3) -> list[dict]:
    """Oracle speech regions cut into ~0.3 s pseudo-words (timings only)."""
    words = []
    for s, e, _ in ref:
        n = max(1, round((e - s) / word_s))
        edges = np.linspace(s, e, n + 1)
        words += [{"start": float(a), "end": float(b), "word": " x"} for a, b in itertools.pairwise(edges)]
    return words


def diarize(embedder: SpeakerEmbedder, audio: np.ndarray, words: list[dict], **kw):
    windows = speech_windows(words)
    t0 = time.perf_counter()
    emb = embedder.embed(cut_windows(audio, windows))
    dt = time.perf_counter() - t0
    labels = cluster_speakers(emb, **kw)
    spk = assign_words(words, windows, labels)
    hyp = [(w["start"], w["end"], s) for w, s in zip(words, spk) if s is not None]
    n_spk = len({s for s in spk if s is not None})
    return hyp, n_spk, dt, len(windows)


_ASR = None


def asr_words(audio: np.ndarray) -> list[dict]:
    global _ASR
    if _ASR is None:
        from models.asr import Transcriber

        _ASR = Transcriber(resolve("asr"), cpu_threads=2)
    return [
        {"start": w.start, "end": w.end, "word": w.word} for seg in _ASR.transcribe(audio, max_pause_s=UtterancesConfig().max_pause_s) for w in seg.words
    ]


def ravdess_pair(a: int, b: int, seed: int) -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(seed)
    n_turns = int(rng.integers(10, 21))
    ca, cb = ravdess_clips(a), ravdess_clips(b)
    ia, ib = rng.permutation(len(ca)), rng.permutation(len(cb))
    turns = []
    for k in range(n_turns):
        if k % 2 == 0:
            turns.append((f"A{a}", load_flac(ca[ia[k // 2]])))
        else:
            turns.append((f"A{b}", load_flac(cb[ib[k // 2]])))
    return build_conversation(turns, rng)


def ravdess_single(a: int, seed: int, n_turns: int = 16) -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(seed)
    ca = ravdess_clips(a)
    turns = [(f"A{a}", load_flac(ca[i])) for i in rng.permutation(len(ca))[:n_turns]]
    return build_conversation(turns, rng)


def grid_pair(fa: str, fb: str, seed: int) -> tuple[np.ndarray, list]:
    from emoguide.dataio.media import load_audio

    rng = np.random.default_rng(seed)
    halves = {}
    for f in (fa, fb):
        wav = load_audio(DATA / "grid" / f)
        a, b = (round(x * SR) for x in speech_span(wav))
        wav = wav[a:b]
        # cut at the quietest 30 ms in the middle third
        lo, hi = len(wav) // 3, 2 * len(wav) // 3
        e = np.convolve(wav[lo:hi] ** 2, np.ones(480), "valid")
        cut = lo + int(np.argmin(e)) + 240
        halves[f] = (wav[:cut], wav[cut:])
    turns = [(fa, halves[fa][0]), (fb, halves[fb][0]), (fa, halves[fa][1]), (fb, halves[fb][1])]
    return build_conversation(turns, rng)


def calibrate(embedder: SpeakerEmbedder, n_sessions: int = 300) -> None:
    """Speaker-count accuracy of cluster_speakers over simulated sessions, per threshold."""
    import collections

    per_actor = {}
    for a in range(1, 19):
        wavs = [load_flac(p) for p in ravdess_clips(a)]
        audio, ref = build_conversation([(str(a), w) for w in wavs], np.random.default_rng(a))
        emb = embedder.embed(cut_windows(audio, speech_windows(pseudo_words(ref))))
        per_actor[a] = emb[np.isfinite(emb).all(1)]
    rng = np.random.default_rng(1)
    single, pair = [], []
    for _ in range(n_sessions):
        a, b = rng.choice(np.arange(1, 19), 2, replace=False)
        n, m = rng.integers(15, 40), rng.integers(8, 40)
        xa = per_actor[a][rng.choice(len(per_actor[a]), n, replace=False)]
        xb = per_actor[b][rng.choice(len(per_actor[b]), m, replace=False)]
        single.append(xa)
        pair.append((np.concatenate([xa, xb]), np.r_[np.zeros(n), np.ones(m)]))
    print(f"calibration: {embedder.model_info.name}, {n_sessions} simulated sessions per case "
          f"(RAVDESS windows, all emotions; 15-40 windows of speaker A, 8-40 of B)")
    print(f"{'threshold':>9} {'one actor -> #spk':28} {'two actors -> #spk':28} {'min_speakers=2':22} purity")
    for th in (0.6, 0.65, 0.7, 0.72, 0.75, 0.78, 0.8):
        c1 = collections.Counter(len(set(cluster_speakers(x, threshold=th))) for x in single)
        c2 = collections.Counter(len(set(cluster_speakers(x, threshold=th))) for x, _ in pair)
        labs = [cluster_speakers(x, threshold=th, min_speakers=2) for x, _ in pair]
        c3 = collections.Counter(len(set(lab)) for lab in labs)
        pur = np.mean([max(np.mean((lab == 0) == (y == 0)), np.mean((lab == 0) == (y == 1)))
                       for lab, (_, y) in zip(labs, pair)])
        fmt = lambda c: str(dict(sorted(c.items())))
        print(f"{th:9.2f} {fmt(c1):28} {fmt(c2):28} {fmt(c3):22} {pur:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--asr", action="store_true", help="also use faster-whisper word timings")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--model", default=None, help="speaker_embedding model name (default: the slot's default)")
    args = ap.parse_args()
    if not (DATA / "ravdess").exists():
        sys.exit(f"data not found: {DATA} (see ../shared/data/README.md)")
    embedder = SpeakerEmbedder(resolve("speaker_embedding", args.model))
    print(f"model: {embedder.model_info.name} ({embedder.kind}, {embedder.dim}-d)")
    if args.calibrate:
        calibrate(embedder)

    pairs = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18),  # mixed sex
             (1, 3), (5, 7), (9, 11), (2, 4), (6, 8), (10, 12), (13, 15), (14, 16), (17, 1)]  # same sex
    conditions = []
    for a, b in pairs:
        kind = "mixed-sex" if a % 2 != b % 2 else "same-sex"
        for s in range(args.seeds):
            conditions.append((f"RAVDESS {kind}", f"A{a:02d}+A{b:02d}", 2, lambda a=a, b=b, s=s: ravdess_pair(a, b, s)))
    for f2, sex in [("brbk7n.mpg", "mixed-sex"), ("lbax4n.mpg", "same-sex"), ("sbia1a.mpg", "same-sex"),
                    ("lrwp9a.mpg", "mixed-sex")]:
        conditions.append((f"GRID {sex}", f"swwp2s+{f2[:6]}", 2, lambda f2=f2: grid_pair("id2_vcd_swwp2s.mpg", f2, 0)))
    for a in range(1, 19):
        conditions.append(("RAVDESS single", f"A{a:02d}", 1, lambda a=a: ravdess_single(a, 0, n_turns=12)))

    modes = ["oracle"] + (["asr"] if args.asr else [])
    rows, emb_time, emb_audio = [], 0.0, 0.0
    for group, name, true_n, make in conditions:
        audio, ref = make()
        for mode in modes:
            words = pseudo_words(ref) if mode == "oracle" else asr_words(audio)
            variants = {"est.": {}, "given": {"num_speakers": true_n}}
            if true_n >= 2:
                variants["min2"] = {"min_speakers": 2}
            for how, kw in variants.items():
                hyp, n_spk, dt, n_win = diarize(embedder, audio, words, **kw)
                m = diarization_error_rate(ref, hyp)
                rows.append((group, mode, how, name, true_n, n_spk, m))
                if how == "est.":
                    emb_time += dt
                    emb_audio += 1.5 * n_win

    print(f"\n{'condition':22} {'words':6} {'#spk':5} {'n':>3} {'DER%':>6} {'miss%':>6} {'FA%':>5} "
          f"{'conf%':>6} {'max DER%':>8} {'count ok':>8}")
    keys = []
    for r in rows:
        k = (r[0], r[1], r[2])
        if k not in keys:
            keys.append(k)
    for group, mode, known in keys:
        sel = [r for r in rows if (r[0], r[1], r[2]) == (group, mode, known)]
        tot = sum(r[6]["total_s"] for r in sel)
        agg = {k: sum(r[6][k] * r[6]["total_s"] for r in sel) / tot for k in ("der", "miss", "false_alarm", "confusion")}
        worst = max(sel, key=lambda r: r[6]["der"])
        ok = sum(r[5] == r[4] for r in sel)
        print(f"{group:22} {mode:6} {known:5} {len(sel):3d} {100 * agg['der']:6.2f} "
              f"{100 * agg['miss']:6.2f} {100 * agg['false_alarm']:5.2f} {100 * agg['confusion']:6.2f} "
              f"{100 * worst[6]['der']:7.1f}  {ok:3d}/{len(sel)}   (worst: {worst[3]})")
    print(f"\nembedding speed: {emb_audio / emb_time:.0f}x real time over 1.5 s windows "
          f"({1000 * emb_time / (emb_audio / 1.5):.1f} ms per window, torch threads {__import__('torch').get_num_threads()})")


if __name__ == "__main__":
    main()
