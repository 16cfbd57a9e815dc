"""UNIVL_FAST_* environment knobs: one declared table, strict parsing, named errors, README."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from univl_fast import ops
from univl_fast.errors import UnivlFastError
from univl_fast.runtime.backends import ThreadSettings
from univl_fast.utils import env
from univl_fast.utils.env import KNOBS, EnvVarError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in KNOBS:
        monkeypatch.delenv(name, raising=False)


def test_flags(monkeypatch):
    assert env.env_flag("UNIVL_FAST_ORT_SPIN", True) is True
    for value, expected in [("0", False), ("1", True), (" off ", False), ("Yes", True), ("", True)]:
        monkeypatch.setenv("UNIVL_FAST_ORT_SPIN", value)
        assert env.env_flag("UNIVL_FAST_ORT_SPIN", True) is expected, value


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("UNIVL_FAST_ORT_SPIN", "2", "0 or 1"),
        ("UNIVL_FAST_NATIVE_TEXT", "maybe", "0 or 1"),
        ("UNIVL_FAST_INTRA_OP_THREADS", "four", "an integer >= 1"),
        ("UNIVL_FAST_INTRA_OP_THREADS", "0", "an integer >= 1"),
        ("UNIVL_FAST_INTRA_OP_THREADS", "2.5", "an integer >= 1"),
        ("UNIVL_FAST_TEAM_SPIN_US", "-1", r"an integer >= 0 and <= 1000000"),
        ("UNIVL_FAST_TEAM_SPIN_US", "5000000", r"an integer >= 0 and <= 1000000"),
        ("UNIVL_FAST_SIMD", "avx1024", "one of scalar, avx2, avx512"),
    ],
)
def test_bad_values_name_the_variable_and_value(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    reader = {"flag": lambda n: env.env_flag(n, True), "int": env.env_int, "choice": env.env_choice}
    with pytest.raises(EnvVarError, match=rf"{name}={value!r}: expected {expected}") as info:
        reader[KNOBS[name].kind](name)
    assert isinstance(info.value, UnivlFastError) and isinstance(info.value, ValueError)
    assert (info.value.name, info.value.value) == (name, value)


def test_thread_settings_read_the_knobs(monkeypatch):
    monkeypatch.setenv("UNIVL_FAST_INTRA_OP_THREADS", "3")
    monkeypatch.setenv("UNIVL_FAST_ORT_SPIN", "0")
    assert ThreadSettings().resolved_intra_op() == 3
    assert ThreadSettings().resolved_spin() is False
    assert ThreadSettings(intra_op=5, spin=True).resolved_intra_op() == 5  # explicit wins
    monkeypatch.setenv("UNIVL_FAST_INTRA_OP_THREADS", "lots")
    with pytest.raises(EnvVarError, match="UNIVL_FAST_INTRA_OP_THREADS='lots'"):
        ThreadSettings().resolved_intra_op()
    monkeypatch.setenv("UNIVL_FAST_ORT_SPIN", "spin")
    with pytest.raises(EnvVarError, match="UNIVL_FAST_ORT_SPIN='spin'"):
        ThreadSettings().resolved_spin()


def test_knobs_read_by_the_core_are_checked_before_it_reads_them(monkeypatch, tmp_path):
    from univl_fast.runtime.native_text import NativeTextTower

    monkeypatch.setenv("UNIVL_FAST_TEAM_SPIN_US", "fifty")
    # refused before the file is even opened (the team would silently use its default)
    with pytest.raises(EnvVarError, match="UNIVL_FAST_TEAM_SPIN_US='fifty'"):
        NativeTextTower(tmp_path / "missing.npz")
    monkeypatch.delenv("UNIVL_FAST_TEAM_SPIN_US")
    monkeypatch.setenv("UNIVL_FAST_SIMD", "sse9")
    monkeypatch.setattr(ops, "_core_knobs_checked", False)
    a = np.ones((2, 3), np.float32)
    with pytest.raises(EnvVarError, match="UNIVL_FAST_SIMD='sse9'"):
        ops.combine_image_docs(a, a)


def test_every_knob_in_the_code_is_declared_and_documented():
    used = set()
    for tree, pattern in (("univl_fast", "*.py"), ("csrc", "*.[ch]*")):
        for f in (ROOT / tree).rglob(pattern):
            used |= set(re.findall(r"\bUNIVL_FAST_[A-Z0-9_]+\b", f.read_text(errors="ignore")))
    assert used <= set(KNOBS), f"undeclared knobs: {sorted(used - set(KNOBS))}"
    readme = (ROOT / "README.md").read_text()
    assert env.markdown_table() in readme, "README's environment table is not KNOBS' table"
