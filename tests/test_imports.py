"""The rooms' import graph: every module imports alone, no module imports itself through others, arrows
point down (mest -> tvm_passes -> schedules -> devices; schedules and tvm_passes never import mest,
devices imports none of the others; benchmarks may import every room, and no room imports it). Lazy imports inside functions count: a circle closed at call time is
still a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("benchmarks", "mest", "tvm_passes", "schedules", "devices")
#: Which rooms each room may import (besides itself).
ALLOWED = {"benchmarks": {"mest", "tvm_passes", "schedules", "devices"},
           "mest": {"tvm_passes", "schedules", "devices"}, "tvm_passes": {"schedules", "devices"},
           "schedules": {"devices"}, "devices": set()}


def _modules() -> dict[str, Path]:
    found = {}
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that importing ``name`` runs, directly (parents of a target included, except the
    packages ``name`` itself sits in, which are already being imported)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and not _type_checking_only(node, parents):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not _type_checking_only(node, parents):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets |= {f"{base}.{alias.name}" for alias in node.names}
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
    edges = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            module = ".".join(parts[:i])
            if module in modules and module not in ancestors and module != name:
                edges.add(module)
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (empty when there is none)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_no_module_imports_itself_and_arrows_point_down():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycle(graph) == []
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if b.split(".")[0] != a.split(".")[0] and b.split(".")[0] not in ALLOWED[a.split(".")[0]])
    assert upward == []


def test_imports_inside_functions_count(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from mest.models import build_model\n    import benchmarks.harness\n")
    modules = {"mest.models": ROOT / "mest/models/__init__.py", "benchmarks.harness": ROOT / "benchmarks/harness.py"}
    assert _imports("devices.m", module, modules) == {"mest.models", "benchmarks.harness"}


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_every_module_imports_alone():
    # One interpreter (torch and tvm load once); before each module, every module of ours is
    # forgotten, so each is imported as the first of ours, as a fresh process would.
    script = textwrap.dedent("""
        import importlib, sys, traceback
        failed = []
        for name in sys.argv[1:]:
            for loaded in [m for m in sys.modules if m.split(".")[0] in {rooms!r}]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception:
                failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
        print("\\n".join(failed))
    """).format(rooms=set(ROOMS))
    result = subprocess.run([sys.executable, "-c", script, *_modules()], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ""
