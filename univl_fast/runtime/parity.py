"""Parity of an artifact's outputs against PyTorch's reference outputs (torch-free).

The metrics every check applies (limits: :class:`Limits`, the contract below), per row of the
RAW (un-normalised) embeddings:

- cosine (min, mean): the direction;
- relative L2 error ``||out - ref|| / ||ref||`` (max, mean): direction and scale;
- norm ratio ``||out|| / ||ref||`` (min, max): the scale alone.

Cosine alone cannot see a tower off by a constant factor, and such a tower silently
re-weights image against caption in the image-document vector (paper Eq. 3 sums the RAW
embeddings).

Text artifacts are checked twice: the whole sample in one batch (mixed lengths, cut to the
longest) and every text alone (batch 1, cut to its own length). Then the combined
image-document vector, ``normalize(image_raw + caption_raw)`` computed by the runtime's own
kernel (``univl_fast.ops.combine_image_docs``), is compared with PyTorch's on the sample's
(image, caption) pairs.

The exporter (``univl_fast.export.verify``, which computes the PyTorch reference) and the
runtime's load-time check (``univl_fast.runtime.verify_load``, on the reference inputs kept in
the engine dir) both use this module; so does the TensorRT plan builder on a GPU host without
torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the runtime package imports this module (load-time check): no cycle
    from univl_fast.runtime.tokenizer import ClipTokenizer


def _intra_op_threads() -> int:
    from univl_fast.runtime.backends import ThreadSettings

    return ThreadSettings().resolved_intra_op()


# Parity contract (design.md), per row of every artifact's RAW output, and of the combined
# image-document vector (image + caption, Eq. 3), against the PyTorch model:
# - min cosine: the direction;
# - max relative L2 error ||out - ref|| / ||ref||: direction and scale together;
# - max norm deviation |(||out|| / ||ref||) - 1|: the scale alone. A tower off by 1.1x has
#   norm deviation and relative L2 0.1 on every row, and cosine 1.
# Measured on the built-in sample (export summary; univl-tiny and random ViT-B-32):
# - fp32 graphs (served and standard-op) and their combined vector: relative L2 <= 1.2e-6;
#   limit 1e-3 (float rounding with 800x headroom; also bounds the norm deviation);
# - fp16: relative L2 <= 9.5e-4; int8 (ONNX Runtime): text 0.035 / 0.043 (tiny / ViT-B-32),
#   image 0.012 / 0.017, combined 0.028 / 0.033; native int8 text 0.029 / 0.036; norm
#   ratios within 0.9971..1.0054. The int8 relative L2 is almost all direction
#   (sqrt(2 (1 - cos)) at cos 0.99909 is 0.043), so its limit sits above the cosine's own
#   reach: 0.08 (1.9x the largest measured) still refuses a 1.1x scale (0.1); the norm
#   deviation limit 0.02 (3.7x the largest measured, 0.0054) refuses it 5x over and any
#   scale beyond 2%.
FP32_MIN_COSINE = 0.9999
FP32_MAX_REL_L2 = 1e-3
LOWP_MIN_COSINE = 0.99
LOWP_MAX_REL_L2 = 0.08
LOWP_MAX_NORM_DEVIATION = 0.02


@dataclass(frozen=True)
class Limits:
    """What an artifact must reach to pass, per row vs PyTorch: cosine, relative L2 error
    and norm deviation (see the contract above)."""

    min_cosine: float
    max_rel_l2: float
    max_norm_deviation: float


@dataclass
class Parity:
    """Measured agreement of one graph (or the combined vector) with PyTorch, per row."""

    measured: bool
    passed: bool
    threshold: float  # min cosine required
    max_rel_l2_allowed: float | None = None
    max_norm_deviation_allowed: float | None = None
    min_cosine: float | None = None
    mean_cosine: float | None = None
    max_rel_l2: float | None = None  # max over rows of ||out - ref|| / ||ref||
    mean_rel_l2: float | None = None
    norm_ratio: list[float] | None = None  # [min, max] over rows of ||out|| / ||ref||
    max_abs_err: float | None = None
    max_abs_ref: float | None = None  # scale of the reference values, to read max_abs_err
    rows: int = 0
    provider: str = "CPUExecutionProvider"
    reason: str | None = None  # why not measured / why failed
    written: bool = True  # False: refused, the file was not written (reason says why)
    # the kernel classes it was measured on (univl_fast.runtime.kernel_class): where the
    # runtime may skip its load-time re-check
    measured_on: list[dict] | None = None

    def to_json(self) -> dict:
        return asdict(self)

    def refuse(self, why: str) -> Parity:
        """Mark this artifact as not written because of ``why`` (the measured reason kept)."""
        self.passed = False
        self.written = False
        self.reason = f"not written ({why})" + (f": {self.reason}" if self.reason else "")
        return self


def not_measured(limits: Limits, reason: str) -> Parity:
    return _parity(False, limits, reason=reason)


def _parity(measured: bool, limits: Limits, **values) -> Parity:
    """A failed (or not measured) Parity carrying ``limits``."""
    return Parity(
        measured,
        False,
        limits.min_cosine,
        limits.max_rel_l2,
        limits.max_norm_deviation,
        **values,
    )


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine of two (n, d) arrays, in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return num / np.maximum(den, 1e-300)


def row_rel_l2(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-row relative L2 error ``||out - ref|| / ||ref||``, in float64."""
    o64, r64 = out.astype(np.float64), ref.astype(np.float64)
    return np.linalg.norm(o64 - r64, axis=1) / np.maximum(np.linalg.norm(r64, axis=1), 1e-300)


def _bad_output(out: np.ndarray, ref: np.ndarray, limits: Limits, provider: str) -> Parity | None:
    def failed(reason: str) -> Parity:
        return _parity(True, limits, reason=reason, provider=provider)

    if out.shape != ref.shape:
        return failed(f"shape {out.shape} != reference {ref.shape}")
    if not np.isfinite(out).all():
        return failed("non-finite values in the output")
    return None


def compare(out: np.ndarray, ref: np.ndarray, limits: Limits, provider: str) -> Parity:
    """Raw embeddings ``out`` vs ``ref`` (n, d): passes when every row reaches both limits."""
    bad = _bad_output(out, ref, limits, provider)
    if bad is not None:
        return bad
    cos = row_cosines(out, ref)
    rel = row_rel_l2(out, ref)
    ratio = np.linalg.norm(out.astype(np.float64), axis=1) / np.maximum(
        np.linalg.norm(ref.astype(np.float64), axis=1), 1e-300
    )
    deviation = np.abs(ratio - 1.0)
    p = Parity(
        measured=True,
        passed=False,
        threshold=limits.min_cosine,
        max_rel_l2_allowed=limits.max_rel_l2,
        max_norm_deviation_allowed=limits.max_norm_deviation,
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        max_rel_l2=float(rel.max()),
        mean_rel_l2=float(rel.mean()),
        norm_ratio=[float(ratio.min()), float(ratio.max())],
        max_abs_err=float(np.abs(out.astype(np.float64) - ref).max()),
        max_abs_ref=float(np.abs(ref).max()),
        rows=int(len(out)),
        provider=provider,
    )
    reasons = []
    if p.min_cosine < limits.min_cosine:
        reasons.append(f"min cosine {p.min_cosine:.6f} < {limits.min_cosine} (row {cos.argmin()})")
    if p.max_rel_l2 > limits.max_rel_l2:
        reasons.append(
            f"relative L2 error {p.max_rel_l2:.4f} > {limits.max_rel_l2} (row {rel.argmax()}, "
            f"norm ratio {ratio[rel.argmax()]:.4f})"
        )
    if deviation.max() > limits.max_norm_deviation:
        reasons.append(
            f"norm ratio {ratio[deviation.argmax()]:.4f} off 1 by more than "
            f"{limits.max_norm_deviation} (row {deviation.argmax()}): a scale error"
        )
    p.passed = not reasons
    p.reason = "; ".join(reasons) or None
    return p


def compare_combined(
    image_out: np.ndarray,
    caption_out: np.ndarray,
    image_ref: np.ndarray,
    caption_ref: np.ndarray,
    limits: Limits,
    provider: str,
) -> Parity:
    """The image-document vector (Eq. 3) as the runtime serves it, ``combine_image_docs``
    (normalize(image + caption)), vs PyTorch's. Cosine is taken on the served unit rows; the
    relative L2 error on the raw sums (the scale the two towers contribute)."""
    from univl_fast.ops import combine_image_docs

    ref_sum = image_ref.astype(np.float64) + caption_ref.astype(np.float64)
    raw_sum = image_out.astype(np.float64) + caption_out.astype(np.float64)
    bad = _bad_output(raw_sum, ref_sum, limits, provider)
    if bad is not None:
        return bad
    served = combine_image_docs(
        np.ascontiguousarray(image_out, dtype=np.float32),
        np.ascontiguousarray(caption_out, dtype=np.float32),
    )
    p = compare(raw_sum, ref_sum, limits, provider)
    cos = row_cosines(served, ref_sum)
    p.min_cosine, p.mean_cosine = float(cos.min()), float(cos.mean())
    unit = np.abs(np.linalg.norm(served.astype(np.float64), axis=1) - 1.0).max()
    reasons = [] if p.reason is None else [r for r in p.reason.split("; ") if "cosine" not in r]
    if p.min_cosine < limits.min_cosine:
        reasons.append(f"min cosine {p.min_cosine:.6f} < {limits.min_cosine} (row {cos.argmin()})")
    if unit > 1e-4:
        reasons.append(f"served rows are not unit length (|norm - 1| up to {unit:.2e})")
    p.passed = not reasons
    p.reason = "; ".join(reasons) or None
    return p


def _session(graph: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = _intra_op_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])


@dataclass
class Reference:
    """PyTorch's raw embeddings of the verification sample, float64."""

    texts: np.ndarray  # (n_texts, d)
    captions: np.ndarray  # (n_images, d): the caption paired with each image
    images: np.ndarray  # (n_images, d)


@dataclass
class SampleInputs:
    """The verification sample as the runtime's inputs."""

    tokenizer: ClipTokenizer
    texts: list[str]
    captions: list[str]
    pixels: np.ndarray  # (n_images, 3, H, W) float32


@dataclass
class Outputs:
    """What one tower artifact produced on the sample (raw, float32)."""

    rows: np.ndarray  # texts (batched then alone) or images (batched then the first alone)
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    # pairs: the captions (text tower) or the images (image tower) of the (image, caption)
    # pairs, in pair order


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


def tower_outputs(run: Callable[[np.ndarray], np.ndarray], tower: str, inputs: SampleInputs):
    """``run`` (ids or pixels -> raw) on the sample: the rows to compare and the pair half."""
    if tower == "text":
        rows = run_texts(run, inputs.tokenizer, inputs.texts)
        caption_ids, _ = inputs.tokenizer(inputs.captions)
        return Outputs(rows, np.asarray(run(caption_ids), dtype=np.float32))
    together = np.asarray(run(inputs.pixels), dtype=np.float32)
    alone = np.asarray(run(inputs.pixels[:1]), dtype=np.float32)
    return Outputs(np.concatenate([together, alone]), together)


def check_tower(
    outputs: Outputs, tower: str, ref: Reference, limits: Limits, provider: str
) -> Parity:
    """Compare a tower's outputs on the sample with PyTorch's (rows and, for text, captions)."""
    if tower == "text":
        rows_ref = np.concatenate([ref.texts, ref.texts, ref.captions])
        rows = np.concatenate([outputs.rows, outputs.pairs])
    else:
        rows_ref = np.concatenate([ref.images, ref.images[:1]])
        rows = outputs.rows
    return compare(rows, rows_ref, limits, provider)


def check_combined(
    text: Outputs, image: Outputs, ref: Reference, limits: Limits, provider: str
) -> Parity:
    """The image-document vector from these text and image outputs vs PyTorch's."""
    return compare_combined(image.pairs, text.pairs, ref.images, ref.captions, limits, provider)


def run_graph(
    graph: bytes,
    tower: str,
    inputs: SampleInputs,
    ref: Reference,
    limits: Limits,
    *,
    allow_unrunnable: bool = False,
) -> tuple[Parity, Outputs | None]:
    """Run a serialized graph with ONNX Runtime (CPU) on the sample and compare it with
    PyTorch. Returns the parity and the outputs (None when the graph could not run here and
    ``allow_unrunnable``)."""
    try:
        session = _session(graph)
        name = session.get_inputs()[0].name
        outputs = tower_outputs(lambda x: session.run(None, {name: x})[0], tower, inputs)
    except Exception as exc:  # noqa: BLE001 - an unrunnable graph is reported, not hidden
        if allow_unrunnable:
            reason = (
                "not measured here: ONNX Runtime's CPU provider cannot run it "
                f"({type(exc).__name__}: {str(exc)[:200]}); needs a GPU"
            )
            return _parity(False, limits, reason=reason), None
        raise
    return check_tower(outputs, tower, ref, limits, "CPUExecutionProvider"), outputs


def run_native_text(
    data: bytes, inputs: SampleInputs, ref: Reference, limits: Limits
) -> tuple[Parity, Outputs]:
    """The native int8 text tower (weights file bytes ``data``) on the sample, like a text
    graph: all texts in one batch, then each alone, then the captions."""
    from univl_fast.runtime.kernel_class import native_class
    from univl_fast.runtime.native_text import NativeTextTower

    tower = NativeTextTower(data, threads=_intra_op_threads())
    outputs = tower_outputs(tower.run, "text", inputs)
    provider = f"univl_fast native ({tower.isa})"
    p = check_tower(outputs, "text", ref, limits, provider)
    p.measured_on = [native_class(tower.isa)]
    return p, outputs


def _limits(limits: Limits | float) -> Limits:
    """A bare float is a min cosine, with the loosest scale limits of the contract."""
    if isinstance(limits, Limits):
        return limits
    return Limits(float(limits), LOWP_MAX_REL_L2, LOWP_MAX_NORM_DEVIATION)


def check_native_text(
    data: bytes,
    reference: np.ndarray,
    limits: Limits | float,
    *,
    tokenizer: ClipTokenizer,
    texts: list[str],
) -> Parity:
    """The native int8 text tower (weights file bytes ``data``) on ``texts`` vs
    ``reference`` (n, d): for checks outside an export."""
    from univl_fast.runtime.native_text import NativeTextTower

    tower = NativeTextTower(data, threads=_intra_op_threads())
    out = run_texts(tower.run, tokenizer, texts)
    provider = f"univl_fast native ({tower.isa})"
    return compare(out, np.concatenate([reference, reference]), _limits(limits), provider)


def check_graph(
    graph: bytes,
    tower: str,
    reference: np.ndarray,
    limits: Limits | float,
    *,
    tokenizer: ClipTokenizer | None = None,
    texts: list[str] | None = None,
    pixels: np.ndarray | None = None,
) -> Parity:
    """One graph on texts (text) or pixels (image) vs ``reference`` (n, d): for checks of a
    single tower outside an export (no image-document pairs)."""
    session = _session(graph)
    if tower == "text":
        out = run_text_graph(session, tokenizer, texts)
        ref = np.concatenate([reference, reference])
    else:
        out = run_image_graph(session, pixels)
        ref = np.concatenate([reference, reference[:1]])
    return compare(out, ref, _limits(limits), "CPUExecutionProvider")
