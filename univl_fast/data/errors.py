"""Errors and reports of the dataset layer (torch-free)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from univl_fast.errors import UnivlFastError


class DataFormatError(UnivlFastError, ValueError):
    """A dataset file is missing or malformed. The message names the file and, where there is
    one, the 1-based line number."""

    def __init__(self, path: str | os.PathLike, problem: str, line: int | None = None):
        where = f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)
        super().__init__(f"{where}: {problem}")
        self.path = os.fspath(path)
        self.line = line
        self.problem = problem


@dataclass
class SkipReport:
    """Items a batch iterator skipped, with the reason for each.

    ``skipped`` holds ``(item_id, reason)`` pairs in the order they were met; ``seen`` counts
    every item the iterator was asked for.
    """

    what: str = "images"
    seen: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, item_id: str, reason: str) -> None:
        self.skipped.append((item_id, reason))

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    def summary(self, examples: int = 5) -> str:
        if not self.skipped:
            return f"{self.seen} {self.what} read, none skipped"
        shown = "; ".join(f"{i}: {r}" for i, r in self.skipped[:examples])
        more = f" (+{len(self.skipped) - examples} more)" if len(self.skipped) > examples else ""
        return f"{self.seen} {self.what} read, {len(self.skipped)} skipped: {shown}{more}"


@dataclass
class ValidationReport:
    """What ``DatasetDir.validate()`` found. ``errors`` make the dataset unusable as is;
    ``warnings`` are things readers skip and count (e.g. qrels ids absent from the corpus)."""

    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        lines = [f"dataset {self.path}: " + ("OK" if self.ok else f"{len(self.errors)} error(s)")]
        lines += [f"  {k}: {v}" for k, v in self.counts.items()]
        lines += [f"  ERROR {e}" for e in self.errors]
        lines += [f"  warning {w}" for w in self.warnings]
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        if self.errors:
            raise DataFormatError(self.path, "invalid dataset:\n  " + "\n  ".join(self.errors))


class DataFileMissingError(DataFormatError, FileNotFoundError):
    """A dataset file is missing; the message says which and what it is for. Also a
    FileNotFoundError, so ``except FileNotFoundError`` works too."""
