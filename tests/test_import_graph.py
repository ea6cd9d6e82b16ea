"""The rooms import downwards only: mest -> tvm_passes -> schedules -> devices; nobody imports benchmarks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("mest", "tvm_passes", "schedules", "devices", "benchmarks")
#: What each room must never import (benchmarks may import every room).
FORBIDDEN = {
    "mest": {"benchmarks"},
    "tvm_passes": {"mest", "benchmarks"},
    "schedules": {"mest", "tvm_passes", "benchmarks"},
    "devices": {"mest", "tvm_passes", "schedules", "benchmarks"},
    "benchmarks": set(),
}


def imported_rooms(path: Path) -> set[str]:
    """The rooms a module imports anywhere in it (top level or inside functions), by absolute name."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        rooms.update(name.split(".")[0] for name in names if name.split(".")[0] in ROOMS)
    return rooms


@pytest.mark.parametrize("room", ROOMS)
def test_room_imports_only_downwards(room):
    files = sorted((ROOT / room).rglob("*.py"))
    assert files
    wrong = {str(path.relative_to(ROOT)): sorted(imported_rooms(path) & FORBIDDEN[room]) for path in files}
    assert {path: rooms for path, rooms in wrong.items() if rooms} == {}


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from mest.models import build_model\n    import benchmarks.harness\n")
    assert imported_rooms(module) == {"mest", "benchmarks"}
