"""What every command that searches through an engine shares: its arguments (``--engine``,
``--index``, ``--precision``, ``--backend``) and loading the engine from them, with one
message for a dir that is missing or does not fit."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from univl_fast.search.engine import Engine, load

PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("onnxruntime", "tensorrt")


def add_engine_arguments(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, required: bool = True
) -> None:
    """--engine, --index (both required unless ``required`` is False), --precision, --backend."""
    p.add_argument("--engine", required=required, help="exported engine dir")
    p.add_argument("--index", required=required, help="index dir built from --engine")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="engine precision (default: the fastest whose parity passed)",
    )
    p.add_argument(
        "--backend", choices=BACKENDS, help="engine backend (default: the best available here)"
    )


def open_engine(args: argparse.Namespace, **kwargs: Any) -> Engine:
    """The engine and index the arguments name (raises as ``univl_fast.load`` does);
    ``kwargs`` go to ``univl_fast.load``."""
    return load(
        args.engine, index=args.index, precision=args.precision, backend=args.backend, **kwargs
    )


def load_engine(args: argparse.Namespace, command: str, **kwargs: Any) -> Engine | None:
    """``open_engine``, or None after printing why the engine could not be loaded
    (``univl-fast COMMAND: ...`` on stderr)."""
    try:
        return open_engine(args, **kwargs)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"univl-fast {command}: {exc}", file=sys.stderr)
        return None
