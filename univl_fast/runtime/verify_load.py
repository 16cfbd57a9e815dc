"""The load-time parity check: an engine re-checked on the host that serves it (torch-free).

Parity is measured at export on the exporting host's kernels (``univl_fast.runtime.
kernel_class``). An engine served elsewhere may run the same int8 graph through other kernels:
ONNX Runtime's AVX2 u8s8 GEMM saturates where the AVX-512 VNNI one is exact, so an engine
verified on a VNNI build machine silently degrades on an AVX2 server. The exporter therefore
records, per tower and runtime key, the kernel class it measured on (``measured_on``), and
keeps a few reference inputs with PyTorch's fp32 outputs in the engine dir
(:data:`REFERENCE_FILE`: texts, image-document captions and preprocessed pixels).

When the encoder is about to use an artifact whose class here differs from every class it was
measured on (``UNIVL_FAST_VERIFY_ON_LOAD=auto``, the default; ``always``: every artifact;
``never``: none), it runs the reference inputs through it and applies the thresholds the export
applied (recorded with the parity), for the tower and for the image-document vector. An
artifact that fails is not used: the encoder falls back to the next verified runtime or
precision and says why (``Encoder.verification``, ``/info``, ``univl-fast info --engine``).
Engines exported before this have no reference inputs: they load as before, and the log says
they cannot be re-checked.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from univl_fast.runtime import kernel_class, parity
from univl_fast.runtime.manifest import EngineError, verify_file
from univl_fast.runtime.tokenizer import ClipTokenizer
from univl_fast.utils.env import env_choice

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference_inputs.npz"
REFERENCE_FORMAT = "univl-reference-inputs/1"
# how many of the export's verification sample the engine dir keeps (ViT-B-32: ~0.9 MB)
REFERENCE_TEXTS = 6
REFERENCE_IMAGES = 3
MODES = ("auto", "always", "never")
KNOB = "UNIVL_FAST_VERIFY_ON_LOAD"


def resolve_mode(mode: str | None = None) -> str:
    """``mode`` or, when None, the ``UNIVL_FAST_VERIFY_ON_LOAD`` knob (default auto)."""
    if mode is None:
        return env_choice(KNOB) or "auto"
    if mode not in MODES:
        raise ValueError(f"verify_on_load {mode!r}: choose from {', '.join(MODES)}")
    return mode


# -- the reference inputs file ----------------------------------------------------------------
def reference_bytes(
    texts: list[str],
    captions: list[str],
    pixels: np.ndarray,
    ref: parity.Reference,
) -> bytes:
    """The reference inputs file: ``texts``, ``captions`` (one per image) and ``pixels`` (n, 3,
    S, S; stored as float16, so ``ref.images`` must have been computed on
    ``pixels.astype(float16)``), with PyTorch's raw fp32 outputs (``ref``). Uncompressed npz,
    no pickle."""
    meta = {
        "format": REFERENCE_FORMAT,
        "texts": list(texts),
        "captions": list(captions),
        "reference": "PyTorch fp32 raw (unnormalized) embeddings of exactly these inputs",
    }
    pix16 = np.asarray(pixels, dtype=np.float16)
    if len(captions) != len(pix16) or len(ref.images) != len(pix16):
        raise ValueError("reference inputs: one caption and one reference row per image")
    buf = io.BytesIO()
    np.savez(
        buf,
        meta=np.array(json.dumps(meta)),
        pixels=pix16,
        texts=np.asarray(ref.texts, dtype=np.float32),
        captions=np.asarray(ref.captions, dtype=np.float32),
        images=np.asarray(ref.images, dtype=np.float32),
    )
    return buf.getvalue()


@dataclass
class ReferenceInputs:
    """The engine dir's reference inputs and PyTorch's outputs on them."""

    rel: str
    texts: list[str]
    captions: list[str]
    pixels: np.ndarray  # float32 (n, 3, S, S)
    reference: parity.Reference  # float64

    def sample(self, tokenizer: ClipTokenizer) -> parity.SampleInputs:
        return parity.SampleInputs(tokenizer, self.texts, self.captions, self.pixels)


def load_references(engine_dir: str | Path, manifest: dict[str, Any]) -> ReferenceInputs | None:
    """The engine's reference inputs (checked against the manifest's sha256), or None for an
    engine exported without them. EngineError for a file that is listed but unreadable."""
    rel = manifest.get("reference_inputs")
    if not rel:
        return None
    path = verify_file(engine_dir, manifest, rel)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in ("pixels", "texts", "captions", "images")}
    except (OSError, KeyError, ValueError) as exc:
        raise EngineError(
            f"engine {engine_dir}: {rel}: not a reference inputs file ({exc})"
        ) from exc
    if meta.get("format") != REFERENCE_FORMAT:
        raise EngineError(f"engine {engine_dir}: {rel}: format {meta.get('format')!r}")
    ref = parity.Reference(
        arrays["texts"].astype(np.float64),
        arrays["captions"].astype(np.float64),
        arrays["images"].astype(np.float64),
    )
    pixels = np.ascontiguousarray(arrays["pixels"], dtype=np.float32)
    return ReferenceInputs(rel, list(meta["texts"]), list(meta["captions"]), pixels, ref)


# -- what was measured, what runs here -------------------------------------------------------
def recorded_classes(manifest: dict[str, Any], part: str, key: str) -> list[dict[str, Any]]:
    """The kernel classes the export measured ``part``'s ``key`` artifact on ([] when the
    engine predates the record)."""
    p = manifest.get("parity", {}).get(part, {}).get(key) or {}
    return list(p.get("measured_on") or [])


def recorded_limits(manifest: dict[str, Any], part: str, key: str) -> parity.Limits | None:
    """The thresholds the export applied to ``part``'s ``key`` artifact (None: not recorded)."""
    p = manifest.get("parity", {}).get(part, {}).get(key) or {}
    try:
        return parity.Limits(
            float(p["threshold"]),
            float(p["max_rel_l2_allowed"]),
            float(p["max_norm_deviation_allowed"]),
        )
    except (KeyError, TypeError):
        return None


def tower_class(runtime: str, precision: str, tower: Any) -> dict[str, Any]:
    """This host's kernel class for an opened ``tower`` of ``runtime`` (native, onnxruntime,
    tensorrt) at ``precision``. For ONNX Runtime the provider is the one the session really
    bound (ONNX Runtime falls back to the CPU when a GPU provider cannot start)."""
    if runtime == "native":
        return kernel_class.native_class(tower.isa)
    if runtime == "tensorrt":
        version = kernel_class.tensorrt_version()
        return kernel_class.tensorrt_class(version, getattr(tower, "device_name", None))
    session = getattr(tower, "session", None)
    providers = session.get_providers() if session is not None else ["CPUExecutionProvider"]
    return kernel_class.onnxruntime_class(precision, providers[0])


@dataclass
class TowerCheck:
    """What the load-time check did for one tower's artifact."""

    tower: str
    key: str  # the parity key (precision, "int8-native", "tensorrt-fp16")
    runtime: str
    host_class: dict[str, Any]
    measured_on: list[dict[str, Any]]
    status: str = "same-class"  # same-class | re-checked | failed | unchecked | skipped
    reason: str | None = None
    parity: dict[str, Any] | None = None
    seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "tower": self.tower,
            "key": self.key,
            "runtime": self.runtime,
            "status": self.status,
            "reason": self.reason,
            "host_class": self.host_class,
            "measured_on": self.measured_on,
            "parity": self.parity,
            "seconds": self.seconds,
        }


def needs_check(mode: str, check: TowerCheck) -> str | None:
    """Why ``check``'s artifact must be re-checked here (None: it need not)."""
    if mode == "never":
        return None
    if mode == "always":
        return "UNIVL_FAST_VERIFY_ON_LOAD=always"
    if not check.measured_on:
        return "no kernel class recorded at export"
    if any(kernel_class.same_class(check.host_class, m) for m in check.measured_on):
        return None
    seen = "; ".join(kernel_class.describe(m) for m in check.measured_on)
    return f"this host runs it on {kernel_class.describe(check.host_class)}, measured on {seen}"


def run_check(
    towers: dict[str, Any],
    keys: dict[str, str],
    combined_key: str,
    refs: ReferenceInputs,
    tokenizer: ClipTokenizer,
    manifest: dict[str, Any],
    default_limits: parity.Limits,
) -> tuple[dict[str, parity.Parity], parity.Parity]:
    """Run both opened ``towers`` ({"text": t, "image": t}) on the reference inputs and
    compare with PyTorch's outputs under the limits the export recorded for ``keys[tower]``
    (and ``combined_key`` for the image-document vector). Returns (per tower parity,
    combined parity)."""
    sample = refs.sample(tokenizer)
    outputs, result = {}, {}
    for tower, runner in towers.items():
        limits = recorded_limits(manifest, tower, keys[tower]) or default_limits
        provider = f"load-time check ({keys[tower]})"
        try:
            outputs[tower] = parity.tower_outputs(runner.run, tower, sample)
        except Exception as exc:  # noqa: BLE001 - an artifact that cannot run fails its check
            result[tower] = parity.not_measured(
                limits, f"could not run on the reference inputs: {type(exc).__name__}: {exc}"
            )
            continue
        result[tower] = parity.check_tower(outputs[tower], tower, refs.reference, limits, provider)
    limits = recorded_limits(manifest, "combined", combined_key) or default_limits
    if set(outputs) == {"text", "image"}:
        combined = parity.check_combined(
            outputs["text"], outputs["image"], refs.reference, limits, "load-time check"
        )
    else:
        combined = parity.not_measured(limits, "a tower could not run")
    return result, combined


def timed(fn, *args, **kwargs):
    """(fn's result, seconds)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


__all__ = [
    "KNOB",
    "MODES",
    "REFERENCE_FILE",
    "ReferenceInputs",
    "TowerCheck",
    "load_references",
    "needs_check",
    "recorded_classes",
    "recorded_limits",
    "reference_bytes",
    "resolve_mode",
    "run_check",
    "tower_class",
]


def _limits_default(precision: str) -> parity.Limits:
    if precision == "fp32":
        return parity.Limits(parity.FP32_MIN_COSINE, parity.FP32_MAX_REL_L2, parity.FP32_MAX_REL_L2)
    return parity.Limits(
        parity.LOWP_MIN_COSINE, parity.LOWP_MAX_REL_L2, parity.LOWP_MAX_NORM_DEVIATION
    )


def open_verified(encoder: Any, mode: str | None = None, max_rounds: int = 8) -> dict[str, Any]:
    """Open ``encoder``'s towers (``encoder._towers``) for what it picked, re-checking each
    artifact whose kernel class here was not measured at export (``mode``: see
    :func:`resolve_mode`) and falling back (``encoder.fall_back``) from any that fails. Returns
    the record ``Encoder.verification`` keeps."""
    mode = resolve_mode(mode)
    m, root = encoder.manifest, encoder.engine_dir
    refs: ReferenceInputs | None = None
    refs_read = False
    failed: set[tuple[str, str, str]] = set()
    fallbacks: list[dict[str, Any]] = []
    opened: dict[tuple[str, str, str], Any] = {}
    seen: set[str] = set()
    total = 0.0
    for _ in range(max_rounds):
        choice = encoder.describe_choice()
        if choice in seen:  # a fallback that changes nothing would loop
            raise EngineError(f"engine {root}: load-time check: no way forward from {choice}")
        seen.add(choice)
        for t in ("text", "image"):
            slot = (encoder.backend, t, encoder.parity_key(t))
            if slot not in opened:
                opened[slot] = encoder._open(t)
            encoder._towers[t] = opened[slot]
        checks = {
            t: TowerCheck(
                t,
                encoder.parity_key(t),
                encoder.runtimes[t],
                tower_class(encoder.runtimes[t], encoder.precision, encoder._towers[t]),
                recorded_classes(m, t, encoder.parity_key(t)),
            )
            for t in ("text", "image")
        }
        why = {t: needs_check(mode, c) for t, c in checks.items()}
        combined: dict[str, Any] | None = None
        if mode == "never":
            for c in checks.values():
                c.status, c.reason = "skipped", f"{KNOB}=never"
        elif not any(why.values()):
            for c in checks.values():
                c.reason = "measured at export on this kernel class"
        else:
            if not refs_read:
                refs, refs_read = load_references(root, m), True
            if refs is None:
                for t, c in checks.items():
                    if why[t]:
                        c.status = "unchecked"
                        c.reason = f"{why[t]}; cannot be re-checked: the engine has no reference "
                        c.reason += "inputs (exported before they were kept; re-export)"
                        log.warning("engine %s: %s %s: %s", root, t, c.key, c.reason)
            else:
                (results, comb), secs = timed(
                    run_check,
                    encoder._towers,
                    {t: c.key for t, c in checks.items()},
                    encoder.combined_key(),
                    refs,
                    encoder.tokenizer,
                    m,
                    _limits_default(encoder.precision),
                )
                total += secs
                combined = {"key": encoder.combined_key(), **comb.to_json()}
                for t, c in checks.items():
                    c.parity, c.seconds = results[t].to_json(), round(secs, 4)
                    c.status = "re-checked" if results[t].passed else "failed"
                    c.reason = why[t] or "measured at export on this kernel class"
                    if not results[t].passed:
                        c.reason += f"; failed here: {results[t].reason}"
                bad = [t for t in ("text", "image") if not results[t].passed]
                if bad or not comb.passed:
                    failed |= {(encoder.backend, t, checks[t].key) for t in bad}
                    if not bad:
                        failed.add((encoder.backend, "combined", encoder.combined_key()))
                    what = ", ".join(f"{t} {checks[t].key}: {checks[t].reason}" for t in bad)
                    what = what or f"image-document vector: {comb.reason}"
                    change = encoder.fall_back(failed)
                    log.warning(
                        "engine %s failed the load-time parity check on this host (%s): %s",
                        root,
                        what,
                        change,
                    )
                    fallbacks.append({"from": choice, "why": what, "change": change})
                    continue
        record = {
            "mode": mode,
            "references": refs.rel if refs is not None else m.get("reference_inputs"),
            "towers": {t: c.to_json() for t, c in checks.items()},
            "combined": combined,
            "fallbacks": fallbacks,
            "failed": sorted("/".join(f) for f in failed),
            "seconds": round(total, 4),
        }
        if any(c.status == "re-checked" for c in checks.values()):
            log.info("engine %s re-checked on this host in %.2f s: passed", root, total)
        return record
    raise EngineError(
        f"engine {root}: load-time check: no verified choice after {max_rounds} tries"
    )
