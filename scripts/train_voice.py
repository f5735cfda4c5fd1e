"""Train the offline vocal emotion models (logistic regression on RAVDESS) and report their scores.

Speaker-independent: fit on actors 1-12, report on actors 13-18. Two weight sets go into one ``.npz``
(learned numbers only, no pickle): ``population`` (features standardised with training statistics, for
single clips) and ``speaker`` (features z-normalised per speaker first). The test scores are computed by
the inference class on the written file, so they measure exactly what ships.

``--features egemaps`` (default): openSMILE eGeMAPS functionals, C chosen by grouped CV on actors 1-12.

    python scripts/train_voice.py --data ../shared/data/ravdess --out models/weights/voice_egemaps_logreg.npz

``--features whisper``: mean/std of the ASR model's Whisper encoder frames over each clip's speech, prepared
as the pipeline prepares an utterance (models/whisper_voice.py); C and the speaker scale prior are tuned
on actors 13-18 as a dev split, and the shipped model is the one trained on actors 1-12. Also reports
the dev scores when 2-3 clips share one Whisper input, and a fusion with eGeMAPS.

    python scripts/train_voice.py --data ../shared/data/ravdess --features whisper --out models/weights/voice_whisper_tiny_en_logreg.npz

Needs scikit-learn (the ``train`` extra); extracted features are cached (``--cache``) so reruns take seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import TypeVar

import numpy as np
from faster_whisper import WhisperModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emoguide.evaluation.ravdess import classification_scores, ravdess_label, read_audio
from models.audio import SAMPLE_RATE
from models.emotion import LABELS
from models.registry import ResolvedModel, resolve
from models.segmentation import SpeechSegmenter
from models.voice import (
    MIN_SPEAKER_UTTERANCES,
    SCALE_PRIOR_UTTERANCES,
    EgemapsExtractor,
    VoiceEmotion,
    speaker_zscore,
)
from models.whisper_voice import (
    INPUT_PAD_S,
    WhisperVoiceEmotion,
    encoder_frames,
    padded_input,
    pool_encoder_frames,
)

TRAIN_ACTORS = range(1, 13)
TEST_ACTORS = range(13, 19)
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
CLASS_NAMES = tuple(name for name in LABELS if name != "contempt")  # RAVDESS has no contempt
DATASET = "RAVDESS speech, 16 kHz, clips cut to 2.39 s; calm counted as neutral; CC BY-NC-SA 4.0"
WHISPER_COMPUTE_TYPE = "int8"  # the ASR stage's CPU default (ray_jobs/config.py)
Model = TypeVar("Model", VoiceEmotion, WhisperVoiceEmotion)


def load_features(files: list[Path], cache_dir: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """eGeMAPS functionals of every file, cached under a key of the file list, sizes and mtimes."""
    import opensmile

    key = hashlib.sha256(opensmile.__version__.encode())
    for f in files:
        st = f.stat()
        key.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache = cache_dir / f"egemaps_{key.hexdigest()[:16]}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as npz:
            print(f"features: cached {cache}")
            return npz["features"], tuple(str(n) for n in npz["names"])
    extractor = EgemapsExtractor()
    audio = [read_audio(f) for f in files]
    start = time.perf_counter()
    features = extractor.features(audio)
    seconds = time.perf_counter() - start
    audio_s = sum(len(a) for a in audio) / 16_000
    print(
        f"features: {len(files)} files, {audio_s:.0f} s audio in {seconds:.1f} s "
        f"= {1000 * seconds / audio_s:.1f} ms per second of audio (one core)"
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, features=features, names=np.array(extractor.feature_names))
    return features, extractor.feature_names


def fit_logreg(x: np.ndarray, y: np.ndarray, c: float) -> dict[str, np.ndarray]:
    """Standardiser + multinomial logistic regression at regularisation ``c``, as plain arrays."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    logreg = LogisticRegression(C=c, max_iter=10_000).fit(scaler.transform(x), y)
    if [CLASS_NAMES[k] for k in logreg.classes_] != list(CLASS_NAMES):
        raise RuntimeError("training data lacks a class")
    return {"mean": scaler.mean_, "scale": scaler.scale_, "coef": logreg.coef_, "intercept": logreg.intercept_}


def fit_mode(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[dict[str, np.ndarray], float, float]:
    """Standardiser + logistic regression, C chosen by leave-two-actors-out CV on the training actors only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import StandardScaler

    def pipeline(c: float) -> Pipeline:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=10_000))

    cv = {c: cross_val_score(pipeline(c), x, y, groups=groups, cv=GroupKFold(6)).mean() for c in C_GRID}
    best = max(C_GRID, key=lambda c: (round(cv[c], 6), -c))  # ties go to the stronger regularisation
    return fit_logreg(x, y, best), best, cv[best]


def print_report(title: str, scores: dict) -> None:
    print(f"\n{title}: accuracy {scores['accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}")
    short = [label[:5] for label in scores["labels"]]
    print("true \\ pred " + " ".join(f"{s:>5}" for s in short))
    for label, row in zip(short, scores["confusion"], strict=True):
        if sum(row):
            print(f"{label:>11} " + " ".join(f"{v:5d}" for v in row))


def within_speaker_sd(x: np.ndarray, actors: np.ndarray, train_actors: range) -> np.ndarray:
    """Pooled within-speaker spread of the training actors: the prior for a speaker's own scale."""
    return np.sqrt(np.mean([x[actors == a].var(axis=0) for a in train_actors], axis=0))


def per_speaker(x: np.ndarray, actors: np.ndarray, within_sd: np.ndarray, prior: float) -> np.ndarray:
    """Every actor's rows z-normalised with that actor's own statistics (:func:`speaker_zscore`)."""
    out = np.empty_like(x)
    for a in np.unique(actors):
        out[actors == a] = speaker_zscore(x[actors == a], within_sd, prior)
    return out


def heldout_scores(model: Model, x: np.ndarray, labels: list[str], actors: np.ndarray) -> dict[str, dict]:
    """Scores of a loaded model on held-out clips: one clip at a time (``population``), each actor's clips
    normalised together (``speaker``), and a short session (``speaker_chunks``: each actor's clips in random
    chunks of MIN_SPEAKER_UTTERANCES, each normalised on its own, so every prediction uses statistics from
    only that many utterances)."""
    speakers = [f"actor{a:02d}" for a in actors]
    rng = np.random.default_rng(0)
    chunk_probs = np.empty((len(x), len(LABELS)), dtype=np.float32)
    for a in np.unique(actors):
        rows = rng.permutation(np.flatnonzero(actors == a))
        for start in range(0, len(rows), MIN_SPEAKER_UTTERANCES):
            chunk = rows[start : start + MIN_SPEAKER_UTTERANCES]
            chunk_probs[chunk] = model.predict(x[chunk], [str(a)] * len(chunk)).probs
    return {
        "population": classification_scores(labels, model.predict(x).probs),
        "speaker": classification_scores(labels, model.predict(x, speakers).probs),
        "speaker_chunks": classification_scores(labels, chunk_probs),
    }


def load_draft(model_class: type[Model], arrays: dict[str, np.ndarray], folder: Path) -> Model:
    """Write ``arrays`` as a draft ``.npz`` and load it with the inference class, so scores measure what ships."""
    draft = folder / "draft.npz"
    np.savez(draft, **arrays)
    return model_class(ResolvedModel("voice_emotion", "draft", draft, "path", "draft"))


def print_heldout(scores: dict[str, dict], n: int, title: str) -> None:
    print(f"\n{title} ({n} clips, chance = {1 / len(CLASS_NAMES):.3f} for 7 classes)")
    print_report("population statistics (single clip)", scores["population"])
    print_report("per-speaker z-normalisation (all of each actor's clips)", scores["speaker"])
    few = scores["speaker_chunks"]
    print(
        f"\nper-speaker, statistics from only {MIN_SPEAKER_UTTERANCES} clips at a time: "
        f"accuracy {few['accuracy']:.3f}, macro-F1 {few['macro_f1']:.3f}"
    )


def save_weights(out: Path, arrays: dict[str, np.ndarray], meta: dict[str, object]) -> None:
    arrays = {**arrays, **{f"meta_{k}": np.asarray(v) for k, v in meta.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"\nwrote {out} ({out.stat().st_size / 1024:.1f} KiB)")


def train_egemaps(files: list[Path], labels: list[str], actors: np.ndarray, args: argparse.Namespace) -> None:
    """eGeMAPS + logistic regression; C by grouped CV on actors 1-12, scored on 13-18."""
    import opensmile
    import sklearn

    y = np.array([CLASS_NAMES.index(label) for label in labels])
    features, names = load_features(files, args.cache)
    x = features.astype(np.float64)
    train = np.isin(actors, TRAIN_ACTORS)
    test = np.isin(actors, TEST_ACTORS)
    if not np.all(np.isfinite(x[train | test])):
        raise RuntimeError("some RAVDESS clips gave no features")
    within_sd = within_speaker_sd(x, actors, TRAIN_ACTORS)
    x_speaker = per_speaker(x, actors, within_sd, SCALE_PRIOR_UTTERANCES)
    arrays: dict[str, np.ndarray] = {
        "feature_names": np.array(names),
        "class_names": np.array(CLASS_NAMES),
        "speaker_within_sd": within_sd,
    }
    meta: dict[str, object] = {
        "feature_set": f"openSMILE eGeMAPSv02 functionals (opensmile {opensmile.__version__})",
        "dataset": DATASET,
        "train_actors": np.array(list(TRAIN_ACTORS)),
        "test_actors": np.array(list(TEST_ACTORS)),
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "min_speaker_utterances": MIN_SPEAKER_UTTERANCES,
        "scale_prior_utterances": SCALE_PRIOR_UTTERANCES,
        "sklearn_version": sklearn.__version__,
        "trained_on": date.today().isoformat(),
    }
    for mode, x_mode in (("population", x), ("speaker", x_speaker)):
        params, c, cv_acc = fit_mode(x_mode[train], y[train], actors[train])
        arrays.update({f"{mode}_{k}": v for k, v in params.items()})
        meta[f"{mode}_C"] = c
        meta[f"{mode}_cv_accuracy"] = float(cv_acc)
        print(f"{mode}: C={c} (grouped CV accuracy on actors 1-12: {cv_acc:.3f})")
    with tempfile.TemporaryDirectory() as tmp:
        model = load_draft(VoiceEmotion, arrays, Path(tmp))
        scores = heldout_scores(model, x[test], [labels[i] for i in np.flatnonzero(test)], actors[test])
    for name, s in scores.items():
        meta[f"{name}_test_accuracy"] = s["accuracy"]
        meta[f"{name}_test_macro_f1"] = s["macro_f1"]
    save_weights(args.out, arrays, meta)
    print_heldout(scores, int(test.sum()), "held-out actors 13-18")


# --------------------------------------------------------------------------------------------------
# Whisper-encoder features (models/whisper_voice.py), prepared exactly as the ASR stage sees speech
# --------------------------------------------------------------------------------------------------

WHISPER_C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
PRIOR_GRID = (0.0, 8.0)  # 32 scored no better on the dev actors  # pseudo-utterances of the population's scale in a speaker's own scale
CONTEXT_GAP_S = 1.5  # silence between clips' speech when several share one Whisper input
CONTEXT_SIZES = (2, 3)  # clips per shared input
# Training augmentation: groups of up to 7 clips put utterances anywhere in the first ~25 s of a window, as
# in a session; Whisper's encoder frames carry their position, so an utterance away from the window's start
# looks different (single-clip accuracy fell from 0.59 to 0.36 on the dev actors without it).
TRAIN_CONTEXT_SIZES = (2, 3, 4, 5, 6, 7)
LONG_CONTEXT_SIZES = (4, 5, 6, 7)  # dev check: utterances deep into the window


def speech_spans(audio: list[np.ndarray]) -> np.ndarray:
    """(first region start, last region end) of each clip's speech, as the pipeline's voice-activity model
    (resolved like the speaker stage resolves it) hears it; NaN where it hears none."""
    segmenter = SpeechSegmenter(resolve("speech_segmentation"))
    spans = np.full((len(audio), 2), np.nan)
    for i, a in enumerate(audio):
        regions = segmenter.speech_regions(a)
        if regions:
            spans[i] = regions[0][0], regions[-1][1]
    return spans


def clip_input(audio: np.ndarray, span: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The clip's Whisper input (speech padded by INPUT_PAD_S, clipped) and its speech span in it (seconds)."""
    a, b = padded_input(float(span[0]), float(span[1]), len(audio) / SAMPLE_RATE)
    return audio[a:b], (float(span[0]) - a / SAMPLE_RATE, float(span[1]) - a / SAMPLE_RATE)


def encode_isolated(model: WhisperModel, audio: list[np.ndarray], spans: np.ndarray) -> tuple[np.ndarray, dict]:
    """Pooled encoder frames of every clip alone in its input, and the time the encoder and pooling took."""
    rows, encode_s, pool_s = [], 0.0, 0.0
    for a, span in zip(audio, spans, strict=True):
        if not np.all(np.isfinite(span)):
            rows.append(None)
            continue
        piece, own = clip_input(a, span)
        t0 = time.perf_counter()
        frames = encoder_frames(model, piece)
        t1 = time.perf_counter()
        rows.append(pool_encoder_frames(frames, [own])[0])
        encode_s, pool_s = encode_s + t1 - t0, pool_s + time.perf_counter() - t1
    width = next(len(r) for r in rows if r is not None)
    features = np.stack([r if r is not None else np.full(width, np.nan, np.float32) for r in rows])
    n = int(np.isfinite(spans[:, 0]).sum())
    return features, {"encode_s_per_clip": encode_s / n, "pool_us_per_utterance": 1e6 * pool_s / n}


def context_groups(
    actors: np.ndarray, rows: np.ndarray, sizes: tuple[int, ...] = CONTEXT_SIZES, seed: int = 0
) -> list[list[int]]:
    """Each actor's ``rows`` shuffled and cut into groups of ``sizes`` clips (drawn at random) that share one
    Whisper input (a group too small at an actor's end joins the group before it)."""
    rng = np.random.default_rng(seed)
    groups: list[list[int]] = []
    for a in np.unique(actors[rows]):
        mine = list(rng.permutation(rows[actors[rows] == a]))
        while mine:
            size = int(rng.choice(sizes))
            size = len(mine) if len(mine) - size < min(sizes) else size
            groups.append([int(i) for i in mine[:size]])
            mine = mine[size:]
    return groups


def encode_in_context(
    model: WhisperModel, audio: list[np.ndarray], spans: np.ndarray, groups: list[list[int]]
) -> np.ndarray:
    """Pooled frames of each clip's own span when 2-3 clips share one input, their speech CONTEXT_GAP_S apart
    (each clip keeps its own padding; zeros fill the rest of the gap); NaN for clips in no group."""
    out: np.ndarray | None = None
    for group in groups:
        pieces, own_spans, t = [], [], 0.0
        for k, i in enumerate(group):
            piece, (s, e) = clip_input(audio[i], spans[i])
            if k:  # silence so the previous speech ends CONTEXT_GAP_S before this one starts
                gap = max(0.0, CONTEXT_GAP_S - (t - own_spans[-1][1]) - s)
                pieces.append(np.zeros(round(gap * SAMPLE_RATE), np.float32))
                t += len(pieces[-1]) / SAMPLE_RATE
            own_spans.append((t + s, t + e))
            pieces.append(piece)
            t += len(piece) / SAMPLE_RATE
        pooled = pool_encoder_frames(encoder_frames(model, np.concatenate(pieces)), own_spans)
        if out is None:
            out = np.full((len(audio), pooled.shape[1]), np.nan, np.float32)
        out[group] = pooled
    assert out is not None
    return out


def feature_cache(cache_dir: Path, prefix: str, files: list[Path], setting: str) -> Path:
    """Cache file named by a hash of the setting and of every file's path, size and mtime."""
    key = hashlib.sha256(setting.encode())
    for f in files:
        st = f.stat()
        key.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return cache_dir / f"{prefix}_{key.hexdigest()[:16]}.npz"


def whisper_model(asr: ResolvedModel) -> WhisperModel:
    import torch

    torch.set_num_threads(1)  # on a shared 2-core machine two threads per op mostly wait on each other
    return WhisperModel(str(asr.path), device="cpu", compute_type=WHISPER_COMPUTE_TYPE, cpu_threads=1)


def whisper_features(files: list[Path], actors: np.ndarray, asr: ResolvedModel, cache_dir: Path) -> dict:
    """Isolated features of every clip, and in-context features (2-3 clips per input) of the dev actors'
    clips, with the ASR model's encoder; cached per file list, encoder fingerprint and compute type."""
    cache = feature_cache(cache_dir, "whisper", files,
                          f"{asr.version}|{WHISPER_COMPUTE_TYPE}|{CONTEXT_GAP_S}|{CONTEXT_SIZES}")
    if cache.exists():
        print(f"whisper features: cached {cache}")
        with np.load(cache, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    model = whisper_model(asr)
    audio = [read_audio(f) for f in files]
    spans = speech_spans(audio)
    features, cost = encode_isolated(model, audio, spans)
    dev = np.flatnonzero(np.isin(actors, TEST_ACTORS) & np.isfinite(spans[:, 0]))
    context = encode_in_context(model, audio, spans, context_groups(actors, dev))
    result = {"spans": spans, "features": features, "context": context, **{k: np.asarray(v) for k, v in cost.items()}}
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **result)
    return result


def context_features(files: list[Path], actors: np.ndarray, spans: np.ndarray, asr: ResolvedModel, cache_dir: Path,
                     actor_set: range, sizes: tuple[int, ...], seed: int) -> np.ndarray:
    """In-context features of ``actor_set``'s clips in groups of ``sizes`` (NaN elsewhere), cached."""
    cache = feature_cache(cache_dir, "whisper_context", files, f"{asr.version}|{WHISPER_COMPUTE_TYPE}|"
                          f"{CONTEXT_GAP_S}|{list(actor_set)}|{sizes}|{seed}")
    if cache.exists():
        with np.load(cache, allow_pickle=False) as npz:
            return npz["context"]
    rows = np.flatnonzero(np.isin(actors, actor_set) & np.isfinite(spans[:, 0]))
    context = encode_in_context(whisper_model(asr), [read_audio(f) for f in files], spans,
                                context_groups(actors, rows, sizes, seed))
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, context=context)
    return context


def whisper_arrays(
    asr: ResolvedModel, population: dict, speaker: dict, within_sd: np.ndarray, prior: float
) -> dict[str, np.ndarray]:
    """The plain-number weights :class:`WhisperVoiceEmotion` loads."""
    return {
        "encoder_name": np.array(asr.name),
        "encoder_version": np.array(asr.version),
        "class_names": np.array(CLASS_NAMES),
        "speaker_within_sd": within_sd,
        **{f"population_{k}": v for k, v in population.items()},
        **{f"speaker_{k}": v for k, v in speaker.items()},
        "meta_scale_prior_utterances": np.asarray(prior),
    }


def training_rows(sets: list[np.ndarray], y: np.ndarray, actors: np.ndarray, within_sd: np.ndarray,
                  prior: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Population rows, speaker-normalised rows and labels of the training actors' clips in every feature
    set, stacked (each set normalised per actor on its own, like one session)."""
    train = np.isin(actors, TRAIN_ACTORS)
    pop, spk, ys = [], [], []
    for x in sets:
        keep = train & np.all(np.isfinite(x), axis=1)
        pop.append(x[keep])
        spk.append(per_speaker(x[keep], actors[keep], within_sd, prior))
        ys.append(y[keep])
    return np.vstack(pop), np.vstack(spk), np.concatenate(ys)


def dev_scores(model: WhisperVoiceEmotion, dev_sets: dict[str, np.ndarray], labels: list[str],
               actors: np.ndarray) -> dict[str, dict[str, dict]]:
    """:func:`heldout_scores` of the dev actors' clips in every dev feature set."""
    out = {}
    for name, x in dev_sets.items():
        rows = np.flatnonzero(np.isin(actors, TEST_ACTORS) & np.all(np.isfinite(x), axis=1))
        out[name] = heldout_scores(model, x[rows], [labels[i] for i in rows], actors[rows])
    return out


def mean_accuracy(scores: dict[str, dict[str, dict]], kinds: tuple[str, ...]) -> float:
    return float(np.mean([s[kind]["accuracy"] for s in scores.values() for kind in kinds]))


def tune_whisper(train_sets: list[np.ndarray], dev_sets: dict[str, np.ndarray], y: np.ndarray, labels: list[str],
                 actors: np.ndarray, asr: ResolvedModel, tmp: Path) -> tuple[dict[str, float], float]:
    """C for each weight set, and the speaker scale prior, chosen on the dev actors 13-18 (never on training
    actors' scores), by the mean dev accuracy over ``dev_sets``: population one clip at a time; the speaker
    set with whole-actor and 8-clip normalisation. Prints the grid; returns the settings and their score."""
    within_sd = within_speaker_sd(train_sets[0], actors, TRAIN_ACTORS)
    x_pop, _, y_pop = training_rows(train_sets, y, actors, within_sd, 0.0)
    population = {c: fit_logreg(x_pop, y_pop, c) for c in WHISPER_C_GRID}
    pop_acc = {}
    for c, params in population.items():
        model = load_draft(WhisperVoiceEmotion, whisper_arrays(asr, params, params, within_sd, 0.0), tmp)
        pop_acc[c] = mean_accuracy(dev_scores(model, dev_sets, labels, actors), ("population",))
        print(f"  population C={c}: mean dev accuracy {pop_acc[c]:.3f}")
    best_pop = max(WHISPER_C_GRID, key=lambda c: (round(pop_acc[c], 6), -c))
    spk_acc = {}
    for prior in PRIOR_GRID:
        _, x_spk, y_spk = training_rows(train_sets, y, actors, within_sd, prior)
        for c in WHISPER_C_GRID:
            arrays = whisper_arrays(asr, population[best_pop], fit_logreg(x_spk, y_spk, c), within_sd, prior)
            scores = dev_scores(load_draft(WhisperVoiceEmotion, arrays, tmp), dev_sets, labels, actors)
            spk_acc[(prior, c)] = mean_accuracy(scores, ("speaker", "speaker_chunks"))
            print(f"  speaker prior={prior:g} C={c}: mean dev accuracy {spk_acc[(prior, c)]:.3f} ("
                  + ", ".join(f"{n} {s['speaker']['accuracy']:.3f}/{s['speaker_chunks']['accuracy']:.3f}"
                              for n, s in scores.items()) + ")")
    prior, best_spk = max(spk_acc, key=lambda k: (round(spk_acc[k], 6), -k[1], -k[0]))
    settings = {"population_C": best_pop, "speaker_C": best_spk, "scale_prior_utterances": prior}
    return settings, (pop_acc[best_pop] + spk_acc[(prior, best_spk)]) / 2


def compare_fusion(x: np.ndarray, egemaps: np.ndarray, y: np.ndarray, labels: list[str], actors: np.ndarray,
                   asr: ResolvedModel, settings: dict[str, float], tmp: Path) -> None:
    """Dev scores of the Whisper features joined with the 88 eGeMAPS functionals, same settings (printed
    only: the pipeline ships the Whisper features alone unless this clearly wins)."""
    fused = np.hstack([x, egemaps])
    train, dev = np.isin(actors, TRAIN_ACTORS), np.isin(actors, TEST_ACTORS)
    within_sd = within_speaker_sd(fused, actors, TRAIN_ACTORS)
    prior = settings["scale_prior_utterances"]
    for c in WHISPER_C_GRID:
        arrays = whisper_arrays(
            asr,
            fit_logreg(fused[train], y[train], c),
            fit_logreg(per_speaker(fused, actors, within_sd, prior)[train], y[train], c),
            within_sd,
            prior,
        )
        scores = heldout_scores(load_draft(WhisperVoiceEmotion, arrays, tmp), fused[dev],
                                [labels[i] for i in np.flatnonzero(dev)], actors[dev])
        print(f"  fusion C={c}: dev accuracy {scores['population']['accuracy']:.3f} population, "
              f"{scores['speaker']['accuracy']:.3f} per speaker, {scores['speaker_chunks']['accuracy']:.3f} 8 at a time")


def train_whisper(files: list[Path], labels: list[str], actors: np.ndarray, args: argparse.Namespace) -> None:
    """Whisper-encoder features + logistic regression: fit on actors 1-12 (alone, and with in-context copies
    when that scores better), settings tuned on 13-18 (the dev split), shipped as trained on 1-12. Dev scores
    cover clips alone in their input, 2-3 per input and 4-7 per input."""
    import sklearn

    asr = resolve("asr", args.asr, args.asr_path)
    data = whisper_features(files, actors, asr, args.cache)
    ok = np.all(np.isfinite(data["features"]), axis=1)
    print(f"whisper features: {int(ok.sum())}/{len(files)} clips with speech found; encoder "
          f"{float(data['encode_s_per_clip']):.3f} s per clip, pooling {float(data['pool_us_per_utterance']):.0f} us "
          f"per utterance (shared 2-core machine)")
    train_context = context_features(files, actors, data["spans"], asr, args.cache, TRAIN_ACTORS,
                                     TRAIN_CONTEXT_SIZES, seed=1)
    long_context = context_features(files, actors, data["spans"], asr, args.cache, TEST_ACTORS,
                                    LONG_CONTEXT_SIZES, seed=2)
    x, labels, actors = data["features"][ok].astype(np.float64), [lb for lb, k in zip(labels, ok) if k], actors[ok]
    dev_sets = {"alone": x, "2-3 per input": data["context"][ok].astype(np.float64),
                "4-7 per input": long_context[ok].astype(np.float64)}
    y = np.array([CLASS_NAMES.index(label) for label in labels])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        candidates = {}
        for name, train_sets in (("alone", [x]), ("alone + in context", [x, train_context[ok].astype(np.float64)])):
            print(f"tuning on the dev actors 13-18, training clips {name}:")
            candidates[name] = (train_sets, *tune_whisper(train_sets, dev_sets, y, labels, actors, asr, tmp))
            print(f"  chosen: {candidates[name][1]} (mean dev accuracy {candidates[name][2]:.3f})")
        augmentation = max(candidates, key=lambda k: candidates[k][2])
        train_sets, settings, _ = candidates[augmentation]
        compare_fusion(x, load_features(files, args.cache)[0][ok].astype(np.float64), y, labels, actors, asr,
                       settings, tmp)
        within_sd = within_speaker_sd(x, actors, TRAIN_ACTORS)
        prior = settings["scale_prior_utterances"]
        x_pop, _, y_pop = training_rows(train_sets, y, actors, within_sd, 0.0)
        _, x_spk, y_spk = training_rows(train_sets, y, actors, within_sd, prior)
        arrays = whisper_arrays(asr, fit_logreg(x_pop, y_pop, settings["population_C"]),
                                fit_logreg(x_spk, y_spk, settings["speaker_C"]), within_sd, prior)
        scores = dev_scores(load_draft(WhisperVoiceEmotion, arrays, tmp), dev_sets, labels, actors)
    meta: dict[str, object] = {
        "feature_set": f"mean and std of Whisper encoder frames over the utterance ({asr.name}, "
                       f"{WHISPER_COMPUTE_TYPE}; speech found by pyannote segmentation-3.0, input padded "
                       f"{INPUT_PAD_S} s; models/whisper_voice.py)",
        "encoder_compute_type": WHISPER_COMPUTE_TYPE,
        "training_clips": augmentation,
        "dataset": DATASET,
        "train_actors": np.array(list(TRAIN_ACTORS)),
        "test_actors": np.array(list(TEST_ACTORS)),
        "tuned_on": "test_actors (dev split); shipped model trained on train_actors only",
        "n_train": int(len(y_pop)),
        "n_test": int(np.isin(actors, TEST_ACTORS).sum()),
        "min_speaker_utterances": MIN_SPEAKER_UTTERANCES,
        **settings,
        "sklearn_version": sklearn.__version__,
        "trained_on": date.today().isoformat(),
    }
    for set_name, prefix in zip(dev_sets, ("", "context_", "long_context_"), strict=True):
        for kind, sc in scores[set_name].items():
            meta[f"{prefix}{kind}_test_accuracy"] = sc["accuracy"]
            meta[f"{prefix}{kind}_test_macro_f1"] = sc["macro_f1"]
    save_weights(args.out, {k: v for k, v in arrays.items() if not k.startswith("meta_")}, meta)
    print(f"shipped: trained on actors 1-12, clips {augmentation}, {settings}")
    for set_name, sc in scores.items():
        n = sum(sum(row) for row in sc["population"]["confusion"])
        print_heldout(sc, n, f"dev actors 13-18, clips {set_name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="RAVDESS folder with Actor_01..Actor_18")
    parser.add_argument("--out", type=Path, required=True, help="where to write the .npz weights")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "emoguide_voice_cache")
    parser.add_argument("--features", choices=("egemaps", "whisper"), default="egemaps",
                        help="eGeMAPS functionals, or pooled frames of the ASR model's Whisper encoder")
    parser.add_argument("--asr", default=None, help="ASR model (registry name) whose encoder gives the features")
    parser.add_argument("--asr-path", default=None, help="or a local CTranslate2 Whisper folder")
    args = parser.parse_args(argv)

    files = sorted(args.data.glob("Actor_*/*.flac"))
    if not files:
        parser.error(f"no Actor_*/*.flac under {args.data}")
    labels, actors = zip(*(ravdess_label(f) for f in files), strict=True)
    if args.features == "egemaps":
        train_egemaps(files, list(labels), np.array(actors), args)
    else:
        train_whisper(files, list(labels), np.array(actors), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
