"""Parity of exported graphs against the PyTorch model (torch world).

Every graph is run with ONNX Runtime on real inputs and compared row by row with open_clip's
own ``encode_text`` (ids padded to the full context, as open_clip does) / ``encode_image``:
per-row cosine (min, mean) and max abs error of the RAW embeddings. Text graphs are checked
twice: the whole sample in one batch (mixed lengths, cut to the longest) and every text alone
(batch 1, cut to its own length).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from univl_fast.runtime.backends import ThreadSettings
from univl_fast.runtime.tokenizer import ClipTokenizer


@dataclass
class Parity:
    """Measured agreement of one graph with PyTorch (raw embeddings, per row)."""

    measured: bool
    passed: bool
    threshold: float
    min_cosine: float | None = None
    mean_cosine: float | None = None
    max_abs_err: float | None = None
    max_abs_ref: float | None = None  # scale of the reference values, to read max_abs_err
    rows: int = 0
    provider: str = "CPUExecutionProvider"
    reason: str | None = None  # why not measured / why failed

    def to_json(self) -> dict:
        return asdict(self)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine of two (n, d) arrays, in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return num / np.maximum(den, 1e-300)


def compare(out: np.ndarray, ref: np.ndarray, threshold: float, provider: str) -> Parity:
    if out.shape != ref.shape:
        return Parity(
            True,
            False,
            threshold,
            reason=f"shape {out.shape} != reference {ref.shape}",
            provider=provider,
        )
    if not np.isfinite(out).all():
        return Parity(
            True,
            False,
            threshold,
            reason="non-finite values in the output",
            provider=provider,
            rows=len(out),
        )
    cos = row_cosines(out, ref)
    p = Parity(
        measured=True,
        passed=bool(cos.min() >= threshold),
        threshold=threshold,
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        max_abs_err=float(np.abs(out.astype(np.float64) - ref).max()),
        max_abs_ref=float(np.abs(ref).max()),
        rows=int(len(out)),
        provider=provider,
    )
    if not p.passed:
        p.reason = f"min cosine {p.min_cosine:.6f} < {threshold} (row {int(cos.argmin())})"
    return p


def _session(graph: bytes):
    import onnxruntime as ort

    threads = ThreadSettings()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads.resolved_intra_op()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])


@torch.no_grad()
def text_reference(clip: nn.Module, tokenizer: ClipTokenizer, texts: list[str]) -> np.ndarray:
    """open_clip's encode_text on ids padded to the context length: float64 (n, d)."""
    ids = torch.from_numpy(tokenizer.tokenize_padded(texts))
    return clip.encode_text(ids).double().numpy()


@torch.no_grad()
def image_reference(clip: nn.Module, pixels: np.ndarray) -> np.ndarray:
    return clip.encode_image(torch.from_numpy(pixels)).double().numpy()


def run_texts(run, tokenizer: ClipTokenizer, texts: list[str]) -> np.ndarray:
    """``run(ids) -> raw`` on all texts in one batch, then on each alone: float32 (2n, d)."""
    ids, _ = tokenizer(texts)
    together = run(ids)
    alone = [run(tokenizer([t])[0]) for t in texts]
    return np.concatenate([together, *alone]).astype(np.float32)


def run_text_graph(session, tokenizer: ClipTokenizer, texts: list[str]) -> np.ndarray:
    """An ONNX Runtime text session through :func:`run_texts`."""
    name = session.get_inputs()[0].name
    return run_texts(lambda ids: session.run(None, {name: ids})[0], tokenizer, texts)


def run_image_graph(session, pixels: np.ndarray) -> np.ndarray:
    """All images in one batch, then the first alone; returns float32 (n + 1, d)."""
    name = session.get_inputs()[0].name
    together = session.run(None, {name: pixels})[0]
    alone = session.run(None, {name: pixels[:1]})[0]
    return np.concatenate([together, alone]).astype(np.float32)


def check_native_text(
    data: bytes,
    reference: np.ndarray,
    threshold: float,
    *,
    tokenizer: ClipTokenizer,
    texts: list[str],
) -> Parity:
    """The native int8 text tower (weights file bytes ``data``) on the sample, like a text
    graph: all texts in one batch, then each alone."""
    from univl_fast.runtime.native_text import NativeTextTower

    tower = NativeTextTower(data, threads=ThreadSettings().resolved_intra_op())
    out = run_texts(tower.run, tokenizer, texts)
    provider = f"univl_fast native ({tower.isa})"
    return compare(out, np.concatenate([reference, reference]), threshold, provider)


def check_graph(
    graph: bytes,
    tower: str,
    reference: np.ndarray,
    threshold: float,
    *,
    tokenizer: ClipTokenizer | None = None,
    texts: list[str] | None = None,
    pixels: np.ndarray | None = None,
    allow_unrunnable: bool = False,
) -> Parity:
    """Run a serialized graph on the sample and compare it with ``reference`` (n, d)."""
    try:
        session = _session(graph)
        if tower == "text":
            out = run_text_graph(session, tokenizer, texts)
            ref = np.concatenate([reference, reference])
        else:
            out = run_image_graph(session, pixels)
            ref = np.concatenate([reference, reference[:1]])
    except Exception as exc:  # noqa: BLE001 - an unrunnable graph is reported, not hidden
        if allow_unrunnable:
            return Parity(
                False,
                False,
                threshold,
                reason=f"not measured here: ONNX Runtime's CPU "
                f"provider cannot run it ({type(exc).__name__}: {str(exc)[:200]}); "
                "needs a GPU",
            )
        raise
    return compare(out, ref, threshold, "CPUExecutionProvider")
