"""One error family: every public exception class of univl_fast derives from UnivlFastError and
keeps a builtin base (ValueError, RuntimeError, TimeoutError, ...) for older ``except`` code."""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil

import pytest

import univl_fast
from univl_fast.errors import DeadlineExceeded, Overloaded, UnivlFastError

# Module-level base classes a "builtin base" may not be: they say nothing about the error kind.
_TOO_GENERIC = {BaseException, Exception, object}


def _public_exception_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(univl_fast.__path__, prefix="univl_fast."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue  # private modules (and the compiled core, checked separately)
        try:
            module = importlib.import_module(info.name)
        except ImportError as exc:  # an optional extra that is not installed here (tensorrt, ...)
            if "univl_fast" in str(exc):
                raise
            continue
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and not name.startswith("_")
                and obj.__module__.startswith("univl_fast")
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_walk_finds_the_known_classes():
    names = _public_exception_classes()
    # The walk really reaches the package: these are defined in different modules.
    assert "univl_fast.errors.Overloaded" in names
    assert "univl_fast.search.engine.SearchError" in names
    assert len(names) >= 4, sorted(names)


def test_every_public_exception_is_in_the_family_with_a_builtin_base():
    bad = []
    for qualname, cls in sorted(_public_exception_classes().items()):
        if cls is UnivlFastError:
            continue
        if not issubclass(cls, UnivlFastError):
            bad.append(f"{qualname} does not derive from UnivlFastError")
        builtin_bases = [
            b for b in cls.__mro__ if vars(builtins).get(b.__name__) is b and b not in _TOO_GENERIC
        ]
        if not builtin_bases:
            bad.append(f"{qualname} has no builtin base beyond Exception ({cls.__mro__})")
    assert not bad, "\n".join(bad)


def test_compiled_core_raises_the_family():
    """The compiled batcher raises univl_fast.errors classes, not look-alikes."""
    _C = pytest.importorskip("univl_fast._C", reason="compiled core not built")
    exported = [
        getattr(_C, n) for n in dir(_C) if inspect.isclass(getattr(_C, n)) and not n.startswith("_")
    ]
    for cls in exported:
        if issubclass(cls, BaseException):
            assert issubclass(cls, UnivlFastError), cls


@pytest.mark.parametrize(
    ("cls", "builtin", "attrs"),
    [
        (Overloaded, RuntimeError, {"limit": 32, "retry_after_s": 0.5}),
        (DeadlineExceeded, TimeoutError, {"timeout_s": 0.25}),
    ],
)
def test_serving_errors_carry_their_limits(cls, builtin, attrs):
    exc = cls("message", **attrs)
    assert isinstance(exc, UnivlFastError) and isinstance(exc, builtin)
    for k, v in attrs.items():
        assert getattr(exc, k) == v
    with pytest.raises(builtin, match="message"):
        raise exc
