"""Logging set-up for the command-line entry points (library code only logs, never prints).

``configure_cli_logging()`` makes the package's progress (INFO) and warnings visible on stderr
as plain lines (``warning: ...`` for warnings and errors), unless the process configured
logging itself. Other libraries' INFO messages (faiss's loader, ...) stay hidden.
"""

from __future__ import annotations

import logging
import sys


class _CliFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


def configure_cli_logging(level: int = logging.INFO) -> None:
    """Progress and warnings of univl_fast on stderr (called by ``univl-fast`` main)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_CliFormatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    logging.getLogger("univl_fast").setLevel(level)
