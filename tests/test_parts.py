"""models.parts: weights split across registry packages are joined once, verified, and refused on mismatch."""

from __future__ import annotations

import hashlib
import io
import sys
import zipfile
from pathlib import Path

import pytest

from models.parts import MissingPartsError, PartsHashError, SplitWeights, assemble
from models.registry import ModelNotFoundError, resolve


def _install(site: Path, dist: str, rel: str, payload: bytes) -> None:
    """A minimal installed distribution (dist-info + one data file) under ``site``."""
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    target = site / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.setattr(sys, "path", [str(folder), *sys.path])
    return folder


def _split(site: Path, chunks: list[bytes], prefix: str, joined_name: str = "m.gguf", **kw: str) -> SplitWeights:
    parts = []
    for i, chunk in enumerate(chunks, 1):
        rel = f"{prefix}_{i}/data/part{i:02d}.bin"
        _install(site, f"{prefix}-{i}", rel, chunk)
        parts.append((f"{prefix}-{i}", rel))
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    return SplitWeights(parts=tuple(parts), sha256=digest, joined_name=joined_name, **kw)


def test_parts_are_joined_in_order_once(site: Path, tmp_path: Path) -> None:
    split = _split(site, [b"GGUF", b"-two-", b"three"], "tparts")
    path = assemble("m", split, tmp_path / "joined")
    assert path.read_bytes() == b"GGUF-two-three"
    mtime = path.stat().st_mtime_ns
    assert assemble("m", split, tmp_path / "joined").stat().st_mtime_ns == mtime  # verified stamp: not rejoined


def test_a_wrong_hash_fails_closed_and_leaves_nothing(site: Path, tmp_path: Path) -> None:
    split = _split(site, [b"abc", b"def"], "tbad")
    forged = SplitWeights(parts=split.parts, sha256="0" * 64, joined_name="m.gguf")
    with pytest.raises(PartsHashError, match="refusing"):
        assemble("m", forged, tmp_path / "joined")
    assert not any((tmp_path / "joined").rglob("*.gguf*"))


def test_a_missing_part_is_named(site: Path, tmp_path: Path) -> None:
    split = _split(site, [b"a", b"b"], "tmiss")
    incomplete = SplitWeights(parts=(*split.parts, ("tmiss-3", "tmiss_3/data/part03.bin")), sha256=split.sha256,
                              joined_name="m.gguf")
    with pytest.raises(MissingPartsError, match="tmiss-3"):
        assemble("m", incomplete, tmp_path / "joined")


def test_a_split_zip_is_extracted(site: Path, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("model/config.json", "{}")
        zf.writestr("model/desktop.ini", "junk")
    data = buf.getvalue()
    split = _split(site, [data[:10], data[10:]], "tzip", joined_name="m.zip", extract="model/")
    folder = assemble("m", split, tmp_path / "joined")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"])
def test_registry_resolves_the_real_split_gguf(name: str) -> None:
    model = resolve("llm", name)
    assert model.source == "package" and model.path.suffix == ".gguf"
    with open(model.path, "rb") as fh:
        assert fh.read(4) == b"GGUF"


def test_registry_refuses_tampered_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from models import registry

    spec = registry.SPECS["qwen2.5-coder-0.5b-instruct"]
    tampered = replace(spec, split=replace(spec.split, sha256="f" * 64))
    monkeypatch.setitem(registry.SPECS, spec.name, tampered)
    monkeypatch.setenv("EMOGUIDE_JOINED", str(Path(registry.cache_dir()) / "tampered"))
    with pytest.raises(ModelNotFoundError, match="not the pinned"):
        resolve("llm", spec.name)
