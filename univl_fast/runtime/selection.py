"""Which of an engine's artifacts may serve, from the parity its manifest records (torch-free).

The rule: ``auto`` only ever picks an artifact whose parity was measured at export and passed,
for both towers and for the image-document vector (paper Eq. 3) they make together; an
artifact without recorded parity (a TensorRT plan built by hand, an fp16 graph ONNX Runtime's
CPU provider could not run at export) is used only when asked for by name, with a warning.

Parity keys (``manifest["parity"][part][key]``, part = "text" | "image" | "combined"): a
precision ("fp32", "fp16", "int8") for the ONNX graphs, "int8-native" for the native int8
text tower (text, and combined with the int8 image graph) and image tower (image; combined, with
the text tower auto serves, under "int8-native-image"), "tensorrt-fp16" for the plans.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

PLAN_KEY = "tensorrt-fp16"
NATIVE_KEY = "int8-native"
# the image-document vector of the native int8 image tower with the text tower auto serves
NATIVE_IMAGE_COMBINED_KEY = "int8-native-image"
# auto picks the native image tower only when export measured it this many times as fast as
# the int8 image graph on ONNX Runtime (timing noise must not flip the choice)
NATIVE_IMAGE_MARGIN = 1.05
# fastest first, per backend family
SPEED_ORDER = {
    "onnxruntime-cpu": ("int8", "fp32", "fp16"),
    "gpu": ("fp16", "fp32", "int8"),
}


def parity_problem(
    manifest: dict[str, Any], key: str, towers=("text", "image"), combined_key: str | None = None
) -> str | None:
    """Why the ``key`` artifacts are not verified for serving (None: measured and passed for
    ``towers`` and for the combined image-document vector, recorded under ``combined_key``,
    default ``key``).

    An engine exported before the combined check (no ``"combined"`` block) is judged on its
    towers alone.
    """
    parity = manifest.get("parity", {})
    parts = list(towers) + (["combined"] if "combined" in parity else [])
    for part in parts:
        k = (combined_key or key) if part == "combined" else key
        p = parity.get(part, {}).get(k)
        if p is None:
            return f"no {part} parity recorded for {k}"
        if not p.get("measured"):
            return f"{part} {k} parity not measured ({p.get('reason')})"
        if not p.get("passed"):
            return f"{part} {k} missed parity ({p.get('reason')})"
    return None


def plans_problem(manifest: dict[str, Any]) -> str | None:
    """Why the engine's TensorRT plans may not be picked by ``auto`` (None: they may)."""
    plans = manifest.get("tensorrt_plans") or {}
    if not all("fp16" in plans.get(t, {}) for t in ("text", "image")):
        return "no TensorRT plans for both towers"
    return parity_problem(manifest, PLAN_KEY)


def warn_unverified(what: str, problem: str | None) -> None:
    if problem is not None:
        log.warning("%s asked for by name without verified parity: %s", what, problem)


def has_native(manifest: dict[str, Any], tower: str) -> bool:
    """Whether the engine holds native int8 weights for ``tower``."""
    return "int8" in manifest.get("native", {}).get(tower, {})


def available_precisions(manifest: dict[str, Any]) -> list[str]:
    """Precisions the engine can run for both towers: an ONNX graph of that precision, or for
    int8 the native tower's weights (an engine exported where ONNX Runtime's int8 kernels
    missed parity, e.g. an AVX2-only x86 host, has native int8 towers and no int8 graphs)."""
    graphs = manifest["graphs"]
    return [
        p
        for p in ("fp32", "fp16", "int8")
        if all(
            p in graphs.get(t, {}) or (p == "int8" and has_native(manifest, t))
            for t in ("text", "image")
        )
    ]


def int8_pairs(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """The (text, image) int8 runtimes ("onnxruntime" | "native") whose export parity passed
    for both towers and for the image-document vector they make, fastest first (native text,
    then the graphs). The combined key follows ``Encoder.combined_key``."""
    graphs = manifest["graphs"]

    def ok(tower: str, runtime: str) -> bool:
        if runtime == "native":
            return has_native(manifest, tower) and _tower_passed(manifest, tower, NATIVE_KEY)
        return "int8" in graphs.get(tower, {}) and _tower_passed(manifest, tower, "int8")

    out = []
    for text in ("native", "onnxruntime"):
        for image in ("onnxruntime", "native"):
            if not (ok("text", text) and ok("image", image)):
                continue
            if image == "native":
                combined = NATIVE_IMAGE_COMBINED_KEY
            else:
                combined = NATIVE_KEY if text == "native" else "int8"
            if _combined_passed(manifest, combined):
                out.append((text, image))
    return out


def _tower_passed(manifest: dict[str, Any], tower: str, key: str) -> bool:
    p = manifest.get("parity", {}).get(tower, {}).get(key)
    return bool(p and p.get("measured") and p.get("passed"))


def _combined_passed(manifest: dict[str, Any], key: str) -> bool:
    if "combined" not in manifest.get("parity", {}):  # exported before the combined check
        return True
    return _tower_passed(manifest, "combined", key)


def precision_problem(manifest: dict[str, Any], precision: str) -> str | None:
    """Why ``precision`` is not verified for serving on the CPU (None: it is). int8 with graphs
    for both towers: the graphs' parity (native towers are then an optional speed-up, chosen per
    tower); a tower without an int8 graph (its ONNX Runtime route missed parity at export): a
    verified pair in which that tower runs natively."""
    if precision not in available_precisions(manifest):
        # why the export wrote none (its parity record), else plainly that there are none
        why = parity_problem(manifest, precision)
        return why or f"no {precision} graphs or native towers for both towers"
    graphless = [t for t in ("text", "image") if precision not in manifest["graphs"].get(t, {})]
    if precision != "int8" or not graphless:
        return parity_problem(manifest, precision)
    # a tower without an int8 graph runs int8 on its native tower only
    pairs = [
        pair
        for pair in int8_pairs(manifest)
        if all(
            rt == "native" for rt, t in zip(pair, ("text", "image"), strict=True) if t in graphless
        )
    ]
    if pairs:
        return None
    return (
        f"no int8 graph for the {' and '.join(graphless)} tower and no verified int8 pair with "
        "its native tower"
    )


def auto_precision(
    manifest: dict[str, Any], backend: str, exclude: tuple[str, ...] = ()
) -> str | None:
    """The fastest precision whose parity passed for ``backend`` (None: none did). fp16 graphs
    are for GPUs: on the CPU they are slower than fp32, never picked there. On the CPU, int8
    may be served by native towers where the engine has no (verified) int8 graphs. ``exclude``:
    precisions the caller ruled out."""
    family = "onnxruntime-cpu" if backend == "onnxruntime-cpu" else "gpu"
    available = available_precisions(manifest)
    graphs = manifest["graphs"]
    for cand in SPEED_ORDER[family]:
        if cand not in available or cand in exclude:
            continue
        if cand == "fp16" and family == "onnxruntime-cpu":
            continue
        if family != "onnxruntime-cpu":  # GPUs run graphs only
            graphed = all(cand in graphs.get(t, {}) for t in ("text", "image"))
            if graphed and parity_problem(manifest, cand) is None:
                return cand
            continue
        if precision_problem(manifest, cand) is None:
            return cand
    return None


def native_text_problem(manifest: dict[str, Any]) -> str | None:
    """Why ``auto`` may not pick the native int8 text tower on parity grounds (None: it may)."""
    return parity_problem(manifest, NATIVE_KEY, towers=("text",))


def native_image_problem(manifest: dict[str, Any]) -> str | None:
    """Why ``auto`` may not pick the native int8 image tower on parity grounds (None: it may)."""
    return parity_problem(manifest, NATIVE_KEY, ("image",), NATIVE_IMAGE_COMBINED_KEY)


def native_image_speed_problem(manifest: dict[str, Any]) -> str | None:
    """Why ``auto`` may not pick the native int8 image tower on speed grounds (None: it may).

    The exporter times the native tower against the int8 image graph on ONNX Runtime (same
    batch, same threads, interleaved: ``univl_fast.export.native_image.measure_speed``) and
    records it as ``manifest["native"]["image_speed"]``; auto takes native only when it was
    measured at least ``NATIVE_IMAGE_MARGIN`` times as fast. Passing parity is not enough: the
    graph passed it too, so the slower of the two has no reason to serve."""
    speed = manifest.get("native", {}).get("image_speed")
    if not speed:
        return "no speed comparison with the int8 image graph recorded at export (re-export)"
    if not speed.get("measured"):
        return f"speed not measured at export ({speed.get('reason')})"
    native, graph = float(speed["native_images_per_s"]), float(speed["onnxruntime_images_per_s"])
    if native < NATIVE_IMAGE_MARGIN * graph:
        return (
            "measured at export not faster than the int8 image graph on ONNX Runtime by the "
            f"{NATIVE_IMAGE_MARGIN - 1:.0%} margin: {native:.1f} vs {graph:.1f} images/s "
            f"(batch {speed.get('batch')}, {speed.get('threads')} threads)"
        )
    return None
