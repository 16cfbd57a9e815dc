"""The ``UNIVL_FAST_*`` environment knobs: one table, one parser, clear errors.

Every run-time knob is declared once in :data:`KNOBS` (name, type, allowed range, default,
what it does); the README's environment table lists exactly these (tests/test_env.py checks).
Readers call :func:`env_flag` / :func:`env_int`; a bad value raises :class:`EnvVarError`
naming the variable, the value and what is allowed, instead of being ignored. Knobs read by
the compiled core (``read_by="core"``) are checked here too, by :func:`check_core_knobs`, before
the code that reads them runs: C++ falls back to its default on a bad value without a word.

This module imports only ``univl_fast.errors``: any module may import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from univl_fast.errors import UnivlFastError

__all__ = ["KNOBS", "EnvVarError", "Knob", "check_core_knobs", "env_flag", "env_int", "env_choice"]


class EnvVarError(UnivlFastError, ValueError):
    """An environment variable holds a value its knob does not accept."""

    def __init__(self, name: str, value: str, expected: str):
        super().__init__(f"environment variable {name}={value!r}: expected {expected}")
        self.name, self.value, self.expected = name, value, expected


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str  # "flag" (0/1), "int" (in [low, high]) or "choice" (one of choices)
    default: str  # as the README shows it
    doc: str  # one line: what it changes
    read_by: str = "python"  # "python" or "core" (the compiled univl_fast._C reads it itself)
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()

    def expected(self) -> str:
        if self.kind == "flag":
            return "0 or 1 (also false/true, no/yes, off/on)"
        if self.kind == "int":
            top = "" if self.high is None else f" and <= {self.high}"
            return f"an integer >= {self.low}{top}"
        return "one of " + ", ".join(self.choices)


KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob(
            "UNIVL_FAST_INTRA_OP_THREADS",
            "int",
            "physical cores",
            "ONNX Runtime intra-op threads and the native towers' team size",
            low=1,
            high=4096,
        ),
        Knob(
            "UNIVL_FAST_ORT_SPIN",
            "flag",
            "1",
            "ONNX Runtime threads spin between the ops of a run (stopped at its end); 0 blocks",
        ),
        Knob(
            "UNIVL_FAST_NATIVE_TEXT",
            "flag",
            "1",
            "0 keeps `text_runtime='auto'` off the native int8 text tower (ONNX graph instead)",
        ),
        Knob(
            "UNIVL_FAST_NATIVE_IMAGE",
            "flag",
            "1",
            "0 keeps `image_runtime='auto'` off the native int8 image tower (ONNX graph instead)",
        ),
        Knob(
            "UNIVL_FAST_VERIFY_ON_LOAD",
            "choice",
            "auto",
            "load-time parity re-check on the reference inputs: auto (where this host's kernels "
            "differ from those measured at export), always, never",
            choices=("auto", "always", "never"),
        ),
        Knob(
            "UNIVL_FAST_NATIVE_ISA",
            "choice",
            "auto",
            "forces the native int8 towers' kernels to a lower build (tests, comparisons); "
            "a build this CPU lacks is an error",
            choices=("auto", "generic", "avx2", "avx512_vnni"),
        ),
        Knob(
            "UNIVL_FAST_TEAM_SPIN_US",
            "int",
            "50",
            "microseconds an idle native-tower worker polls before it sleeps",
            read_by="core",
            low=0,
            high=1_000_000,
        ),
        Knob(
            "UNIVL_FAST_COMBINE_THREADS",
            "int",
            "CPUs this process may run on",
            "threads of the CPU combine kernel's own pool (read once, at its first call)",
            read_by="core",
            low=1,
            high=1024,
        ),
        Knob(
            "UNIVL_FAST_SIMD",
            "choice",
            "best this CPU runs",
            "caps the CPU combine kernel's instruction set (comparisons, benchmarks)",
            read_by="core",
            choices=("scalar", "avx2", "avx512"),
        ),
    )
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name: str) -> str | None:
    if name not in KNOBS:
        raise KeyError(f"{name} is not a declared knob (univl_fast.utils.env.KNOBS)")
    value = os.environ.get(name)
    return None if value is None or value.strip() == "" else value


def env_flag(name: str, default: bool) -> bool:
    """A 0/1 knob: ``default`` when unset or empty; EnvVarError on anything else."""
    value = _raw(name)
    if value is None:
        return default
    key = value.strip().lower()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise EnvVarError(name, value, KNOBS[name].expected())


def env_int(name: str) -> int | None:
    """An integer knob within its declared range, None when unset or empty."""
    value = _raw(name)
    if value is None:
        return None
    knob = KNOBS[name]
    try:
        number = int(value.strip(), 10)
    except ValueError:
        raise EnvVarError(name, value, knob.expected()) from None
    if (knob.low is not None and number < knob.low) or (
        knob.high is not None and number > knob.high
    ):
        raise EnvVarError(name, value, knob.expected())
    return number


def env_choice(name: str) -> str | None:
    """A choice knob (one of its declared values), None when unset or empty."""
    value = _raw(name)
    if value is None:
        return None
    knob = KNOBS[name]
    if value.strip() not in knob.choices:
        raise EnvVarError(name, value, knob.expected())
    return value.strip()


def check_core_knobs() -> None:
    """Raises EnvVarError if a knob the compiled core reads holds a value it would ignore."""
    readers = {"flag": lambda n: env_flag(n, False), "int": env_int, "choice": env_choice}
    for knob in KNOBS.values():
        if knob.read_by == "core":
            readers[knob.kind](knob.name)


def markdown_table() -> str:
    """The README's environment table, generated from KNOBS."""
    rows = [
        "| variable | values | default | read by | effect |",
        "|---|---|---|---|---|",
    ]
    for k in KNOBS.values():
        reader = "compiled core (checked in Python first)" if k.read_by == "core" else "Python"
        rows.append(f"| `{k.name}` | {k.expected()} | {k.default} | {reader} | {k.doc} |")
    return "\n".join(rows)
