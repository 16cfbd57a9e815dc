"""univl_fast/_C.pyi covers the compiled module: every public name (and every public member of
its classes) has a stub, and the stubs name nothing the module lacks."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

_C = pytest.importorskip("univl_fast._C", reason="compiled core not built")

STUB = Path(__file__).resolve().parents[1] / "univl_fast" / "_C.pyi"


def _stubbed() -> dict[str, set[str] | None]:
    """Top-level stub names -> the member names of a class (None for a function)."""
    out: dict[str, set[str] | None] = {}
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = None
        elif isinstance(node, ast.ClassDef):
            out[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    return out


def _public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def test_every_public_name_has_a_stub():
    stubs = _stubbed()
    have = _public(dir(_C))
    assert have - set(stubs) == set(), "names without a stub in univl_fast/_C.pyi"
    assert set(stubs) - have == set(), "stubs for names the module does not have"
    for name in sorted(have):
        obj = getattr(_C, name)
        if inspect.isclass(obj):
            assert stubs[name] is not None, f"{name} is a class; its stub is a function"
            members = _public(dir(obj)) - _public(dir(object))
            assert members == _public(stubs[name]), name
        else:
            assert stubs[name] is None, f"{name} is a function; its stub is a class"
