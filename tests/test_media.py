"""Decoding real GRID clips with PyAV: durations, sample rate, sampled frames, bounded chunks, errors."""

from __future__ import annotations

import numpy as np
import pytest

from emoguide.dataio.media import MediaError, iter_chunks, load_audio, probe
from models.audio import SAMPLE_RATE


def test_decode_grid_clip(grid_dir):
    path = grid_dir / "bbaf2n.mpg"
    info = probe(path)
    assert info.has_audio and info.has_video
    assert (info.width, info.height) == (360, 288)
    chunks = list(iter_chunks(path, fps=2.0))
    assert len(chunks) == 1 and chunks[0].is_last
    c = chunks[0]
    duration = c.audio.size / SAMPLE_RATE
    assert 2.9 <= duration <= 3.1  # GRID clips are 3 s
    assert c.audio.dtype == np.float32 and np.abs(c.audio).max() > 0.01  # real speech, not silence
    # 2 fps over ~3 s: frames at 0, 0.5, ..., 2.5 s
    assert c.frames.shape == (6, 288, 360, 3) and c.frames.dtype == np.uint8
    assert np.all(np.diff(c.frame_times) > 0.4)
    assert c.frames.std() > 10  # a real picture, not a blank frame


@pytest.mark.parametrize("fps, expected", [(1.0, 3), (5.0, 15)])
def test_frame_rate_is_configurable(grid_dir, fps, expected):
    frames = sum(len(c.frame_times) for c in iter_chunks(grid_dir / "lbax4n.mpg", fps=fps))
    assert abs(frames - expected) <= 1


def test_chunks_are_contiguous_and_bounded(grid_dir):
    path = grid_dir / "sbia1a.mpg"
    whole = load_audio(path)
    chunks = list(iter_chunks(path, fps=2.0, chunk_s=1.0, quiet_search_s=0.5))
    assert len(chunks) >= 2 and chunks[-1].is_last and not any(c.is_last for c in chunks[:-1])
    for a, b in zip(chunks, chunks[1:]):
        assert a.end_s == pytest.approx(b.start_s)
    # no chunk exceeds chunk_s + quiet_search_s: memory is bounded by the chunk, not the file
    assert max(c.audio.size for c in chunks) <= 1.5 * SAMPLE_RATE
    np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks]), whole)
    for c in chunks:  # every frame lands in the chunk whose time span holds it
        assert np.all((c.frame_times >= c.start_s - 1e-6) & (c.frame_times < c.end_s + 1e-6))


def test_max_side_downscales(grid_dir):
    c = next(iter_chunks(grid_dir / "bbaf2n.mpg", max_side=180))
    assert c.frames.shape[1:] == (144, 180, 3)


def test_bad_files_name_the_file_and_reason(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    cases = {
        tmp_path / "missing.mp4": "does not exist",
        empty: "empty",
        garbage: "not a readable media container",
    }
    for path, reason in cases.items():
        with pytest.raises(MediaError) as err:
            list(iter_chunks(path))
        assert str(path) in str(err.value) and reason in str(err.value)


def test_display_rotation_is_applied(tmp_path):
    """A phone video stored sideways with a 90° display matrix decodes upright (as players show it)."""
    import av

    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        v.set_display_rotation(90)
        a = c.add_stream("aac", rate=16000, layout="mono")
        img = np.zeros((48, 64, 3), np.uint8)
        img[:12, :, 0] = 255  # a red band along the stored top edge
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        audio = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="flt", layout="mono")
        audio.sample_rate = 16000
        for p in [*a.encode(audio), *a.encode(None)]:
            c.mux(p)
    (chunk,) = list(iter_chunks(path, fps=2.0))
    assert chunk.frames.shape[1:] == (64, 48, 3)  # portrait now
    red = chunk.frames[0, :, :, 0].astype(float)
    assert red[:, :8].mean() > 150 and red[:, -8:].mean() < 60  # the top edge turned to the left
