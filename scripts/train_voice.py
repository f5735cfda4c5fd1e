"""Train the offline vocal emotion model (eGeMAPS + logistic regression) on RAVDESS and report its scores.

Speaker-independent: fit on actors 1-12, report on actors 13-18. Two weight sets go into one ``.npz``
(learned numbers only, no pickle): ``population`` (features standardised with training statistics, for
single clips) and ``speaker`` (features z-normalised per speaker first). The test scores are computed by
``models.voice.VoiceEmotion`` on the written file, so they measure exactly what ships.

    python scripts/train_voice.py --data ../shared/data/ravdess --out models/weights/voice_egemaps_logreg.npz

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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.emotion import LABELS
from models.registry import ResolvedModel
from models.voice import (
    MIN_SPEAKER_UTTERANCES,
    SCALE_PRIOR_UTTERANCES,
    EgemapsExtractor,
    VoiceEmotion,
    classification_scores,
    ravdess_label,
    read_audio,
    speaker_zscore,
)

TRAIN_ACTORS = range(1, 13)
TEST_ACTORS = range(13, 19)
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
CLASS_NAMES = tuple(name for name in LABELS if name != "contempt")  # RAVDESS has no contempt


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
    fitted = pipeline(best).fit(x, y)
    scaler, logreg = fitted[0], fitted[1]
    if [CLASS_NAMES[k] for k in logreg.classes_] != list(CLASS_NAMES):
        raise RuntimeError("training data lacks a class")
    params = {"mean": scaler.mean_, "scale": scaler.scale_, "coef": logreg.coef_, "intercept": logreg.intercept_}
    return params, best, cv[best]


def print_report(title: str, scores: dict) -> None:
    print(f"\n{title}: accuracy {scores['accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}")
    short = [label[:5] for label in scores["labels"]]
    print("true \\ pred " + " ".join(f"{s:>5}" for s in short))
    for label, row in zip(short, scores["confusion"], strict=True):
        if sum(row):
            print(f"{label:>11} " + " ".join(f"{v:5d}" for v in row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="RAVDESS folder with Actor_01..Actor_18")
    parser.add_argument("--out", type=Path, required=True, help="where to write the .npz weights")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "emoguide_voice_cache")
    args = parser.parse_args(argv)

    import opensmile
    import sklearn

    files = sorted(args.data.glob("Actor_*/*.flac"))
    if not files:
        parser.error(f"no Actor_*/*.flac under {args.data}")
    labels, actors = zip(*(ravdess_label(f) for f in files), strict=True)
    actors_arr = np.array(actors)
    y = np.array([CLASS_NAMES.index(label) for label in labels])
    features, names = load_features(files, args.cache)
    x = features.astype(np.float64)
    train = np.isin(actors_arr, TRAIN_ACTORS)
    test = np.isin(actors_arr, TEST_ACTORS)
    if not np.all(np.isfinite(x[train | test])):
        raise RuntimeError("some RAVDESS clips gave no features")

    # Pooled within-speaker spread of the training actors: the prior for a speaker's own scale.
    within_sd = np.sqrt(np.mean([x[actors_arr == a].var(axis=0) for a in TRAIN_ACTORS], axis=0))
    x_speaker = np.empty_like(x)
    for a in np.unique(actors_arr):
        x_speaker[actors_arr == a] = speaker_zscore(x[actors_arr == a], within_sd)

    arrays: dict[str, np.ndarray] = {
        "feature_names": np.array(names),
        "class_names": np.array(CLASS_NAMES),
        "speaker_within_sd": within_sd,
    }
    meta: dict[str, object] = {
        "feature_set": f"openSMILE eGeMAPSv02 functionals (opensmile {opensmile.__version__})",
        "dataset": "RAVDESS speech, 16 kHz, clips cut to 2.39 s; calm counted as neutral; CC BY-NC-SA 4.0",
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
        params, c, cv_acc = fit_mode(x_mode[train], y[train], actors_arr[train])
        arrays.update({f"{mode}_{k}": v for k, v in params.items()})
        meta[f"{mode}_C"] = c
        meta[f"{mode}_cv_accuracy"] = float(cv_acc)
        print(f"{mode}: C={c} (grouped CV accuracy on actors 1-12: {cv_acc:.3f})")

    # Score the written parameters through the inference code, then store the scores with them.
    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp) / "voice.npz"
        np.savez(draft, **arrays)
        model = VoiceEmotion(ResolvedModel("voice_emotion", "draft", draft, "path", "draft"))
        x_test, test_labels = x[test], [labels[i] for i in np.flatnonzero(test)]
        speakers = [f"actor{a:02d}" for a in actors_arr[test]]
        population = classification_scores(test_labels, model.predict(x_test).probs)
        speaker = classification_scores(test_labels, model.predict(x_test, speakers).probs)
        # A short session: each actor's clips in random chunks of MIN_SPEAKER_UTTERANCES, each chunk normalised
        # on its own, so every prediction uses statistics from only that many utterances.
        rng = np.random.default_rng(0)
        chunk_probs = np.empty((len(x_test), len(LABELS)), dtype=np.float32)
        for a in np.unique(actors_arr[test]):
            rows = rng.permutation(np.flatnonzero(actors_arr[test] == a))
            for start in range(0, len(rows), MIN_SPEAKER_UTTERANCES):
                chunk = rows[start : start + MIN_SPEAKER_UTTERANCES]
                chunk_probs[chunk] = model.predict(x_test[chunk], [str(a)] * len(chunk)).probs
        few = classification_scores(test_labels, chunk_probs)

    for name, scores in (("population", population), ("speaker", speaker), ("speaker_chunks", few)):
        meta[f"{name}_test_accuracy"] = scores["accuracy"]
        meta[f"{name}_test_macro_f1"] = scores["macro_f1"]
    arrays.update({f"meta_{k}": np.asarray(v) for k, v in meta.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)

    print(f"\nheld-out actors 13-18 ({int(test.sum())} clips, chance = {1 / len(CLASS_NAMES):.3f} for 7 classes)")
    print_report("population statistics (single clip)", population)
    print_report("per-speaker z-normalisation (all of each actor's clips)", speaker)
    print(
        f"\nper-speaker, statistics from only {MIN_SPEAKER_UTTERANCES} clips at a time: "
        f"accuracy {few['accuracy']:.3f}, macro-F1 {few['macro_f1']:.3f}"
    )
    print(f"\nwrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
