"""The layering rules of docs/ARCHITECTURE.md, checked on the source: Ray only in ray_jobs/, imports point down."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package -> top-level packages of this repository it must not import at run time
FORBIDDEN = {
    "models": {"emoguide", "ray_jobs", "studio"},
    "emoguide/dataio": {"emoguide.session", "emoguide.prompts", "emoguide.evaluation", "emoguide.report", "ray_jobs"},
    "emoguide/session": {"emoguide.prompts", "emoguide.evaluation", "emoguide.report", "ray_jobs"},
    "emoguide/prompts": {"emoguide.evaluation", "emoguide.report", "ray_jobs"},
    "emoguide/evaluation": {"emoguide.report", "ray_jobs"},
    "emoguide/report": {"ray_jobs"},
    "studio": {"ray_jobs"},
}


def _runtime_imports(path: Path) -> list[str]:
    """Modules imported by a file, leaving out ``if TYPE_CHECKING:`` blocks (annotations only)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_point_down(folder: str) -> None:
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _files(folder)
        for name in _runtime_imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[folder])
    ]
    assert not bad, "\n".join(bad)


def test_ray_is_imported_only_by_ray_jobs() -> None:
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for folder in ("models", "emoguide", "studio")
        for path in _files(folder)
        for name in _runtime_imports(path)
        if name == "ray" or name.startswith("ray.")
    ]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import TYPE_CHECKING\nimport ray\nif TYPE_CHECKING:\n    from ray_jobs.config import RunConfig\n")
    assert _runtime_imports(bad) == ["typing", "ray"]
