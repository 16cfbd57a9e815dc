"""The package structure: no package-level import cycle, one upward import (the lazy
``univl_fast.load`` facade), ``index`` independent of ``scale``. Read from the source (every
import statement, at the top or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "univl_fast"
FACADE = ("<root>", "search")  # univl_fast.load -> univl_fast.search.engine.load, lazily


def _node(parts: list[str]) -> str:
    """univl_fast.<first>... -> the package (or top-level module) it belongs to."""
    return parts[0] if parts else "<root>"


def _module_parts(path: Path) -> list[str]:
    rel = path.relative_to(PKG).with_suffix("").parts
    return list(rel[:-1]) if rel[-1] == "__init__" else list(rel)


def _imported(path: Path) -> set[str]:
    """The univl_fast packages / top-level modules ``path`` imports."""
    out: set[str] = set()
    here = _module_parts(path)
    pkg = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "univl_fast":
                    out.add(_node(parts[1:]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                parts = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "univl_fast":
                parts = node.module.split(".")[1:]
            else:
                continue
            if parts:
                out.add(_node(parts))
            else:  # from univl_fast import X: a module of the root, or a name of __init__
                for a in node.names:
                    sub = PKG / a.name
                    compiled = any(PKG.glob(f"{a.name}.*.so"))
                    is_module = sub.is_dir() or sub.with_suffix(".py").exists() or compiled
                    out.add(a.name if is_module else "<root>")
    return out


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        src = _node(_module_parts(path))
        graph.setdefault(src, set()).update(d for d in _imported(path) if d != src)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_package_cycle_and_one_upward_import():
    graph = package_graph()
    assert FACADE[1] in graph[FACADE[0]], "the load facade is where this test expects it"
    graph[FACADE[0]].discard(FACADE[1])
    assert _cycle(graph) is None, f"package-level import cycle: {' -> '.join(_cycle(graph))}"
    # the root package (load, Hit, __version__) imports nothing else that imports it back
    assert graph["<root>"] <= {"types"}, graph["<root>"]


def test_index_does_not_import_scale_and_scale_is_ray_only():
    graph = package_graph()
    assert "scale" not in graph["index"]
    assert sorted(p.name for p in (PKG / "scale").glob("*.py")) == [
        "__init__.py",
        "errors.py",
        "ray_build.py",
        "ray_encode.py",
        "ray_runtime.py",
        "ray_shards.py",
    ]


def test_the_checker_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
