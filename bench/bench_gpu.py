"""GPU benchmarks (issue 10 section 3), run by ``scripts/gpu_check.sh`` on a CUDA host::

    BENCH_GPU_REPORT=bench/results/gpu_bench.md .venv/bin/python -m pytest bench/bench_gpu.py \
        -q -s -p no:cacheprovider --benchmark-columns=min,median,rounds

Every part skips with its reason where its GPU piece is missing (no GPU, a CPU-only faiss or
ONNX Runtime, no TensorRT), so the file also runs, all skipped, on a CPU machine. Each part
checks its GPU result against the CPU one before timing it (a fast wrong answer is a failure):

* combine: ``ops.combine_image_docs(device="cuda")`` at 100,000 x 512 float32, host arrays in
  and out, vs the numpy baseline of bench_combine (preallocated, in place) and vs torch on the
  GPU (host -> device, add, normalise, device -> host) when torch has CUDA;
* encoders: a random-weight ViT-B-32 engine (bench/engine_setup.py, fp32 + fp16 graphs):
  ORT CPU fp32 (baseline) vs ORT CUDA fp32 / fp16 vs ORT's TensorRT provider on the fp16
  graph; single query latency and 64-image batches;
* faiss: IVF-PQ (``IVF4096,PQ64``) at ``BENCH_GPU_INDEX_N`` (default 1,000,000) x 512
  clustered vectors (bench_index's generator), same trained index searched on the CPU and on
  the GPU (``univl_fast.index.gpu``), nprobe 32, single queries and batches of 64.

The module writes what it measured (and what it skipped, with why) as markdown to
``BENCH_GPU_REPORT`` when set. Nothing here has run on a GPU yet (none available to this
project): the first run on a GPU host is its first test.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from univl_fast import ops

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("BENCH_GPU_DIR", REPO / "runs/bench/gpu"))
N_COMBINE, D = 100_000, 512
N_INDEX = int(os.environ.get("BENCH_GPU_INDEX_N", "1000000"))
ROWS: list[tuple[str, str, str, str]] = []  # (part, case, figure, note)
SKIPS: list[tuple[str, str]] = []


def _median_s(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _skip(part: str, reason: str) -> None:
    SKIPS.append((part, reason))
    pytest.skip(reason)


def _cuda_devices() -> int:
    """GPUs the CUDA driver reports (whatever _C was built with)."""
    from univl_fast.utils.cuda_driver import device_count

    return device_count()


def _core_cuda_devices() -> int:
    try:
        from univl_fast import _C

        return int(_C.cuda_device_count())
    except ImportError:
        return 0


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    path = os.environ.get("BENCH_GPU_REPORT")
    if not path:
        return
    lines = ["| part | case | median | note |", "|---|---|---|---|"]
    lines += [f"| {p} | {c} | {f} | {n} |" for p, c, f, n in ROWS]
    if SKIPS:
        lines += ["", "Skipped:", ""] + [f"- {p}: {r}" for p, r in SKIPS]
    Path(path).write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------- combine
def test_combine_cuda_vs_numpy_and_torch():
    if _core_cuda_devices() == 0:
        _skip("combine", "no CUDA device (or univl_fast._C built without CUDA)")
    rng = np.random.default_rng(0)
    a = rng.random((N_COMBINE, D), dtype=np.float32) * 2 - 1
    b = rng.random((N_COMBINE, D), dtype=np.float32) * 2 - 1
    out = np.empty_like(a)
    ops.combine_image_docs(a, b, out=out, device="cuda")
    ref = ops.combine_image_docs_reference(a[:4096], b[:4096])
    np.testing.assert_allclose(out[:4096], ref, rtol=1e-6, atol=1e-7)
    t_cuda = _median_s(lambda: ops.combine_image_docs(a, b, out=out, device="cuda"), 15)
    t_cpu = _median_s(lambda: ops.combine_image_docs(a, b, out=out), 15)
    base = np.empty_like(a)

    def numpy_inplace():
        np.add(a, b, out=base)
        np.divide(base, np.linalg.norm(base, axis=1, keepdims=True), out=base)

    t_np = _median_s(numpy_inplace, 5)
    ROWS.append(
        ("combine", f"CUDA kernel {N_COMBINE}x{D}, host in/out", f"{t_cuda * 1e3:.2f} ms", "")
    )
    ROWS.append(("combine", "CPU kernel (all threads)", f"{t_cpu * 1e3:.2f} ms", ""))
    ROWS.append(
        ("combine", "numpy preallocated", f"{t_np * 1e3:.2f} ms", f"{t_np / t_cuda:.1f}x CUDA")
    )
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        SKIPS.append(("combine vs torch", "torch without CUDA here"))
        return
    ta, tb = torch.from_numpy(a).pin_memory(), torch.from_numpy(b).pin_memory()
    tout = torch.empty_like(ta).pin_memory()

    def torch_gpu():
        s = ta.cuda(non_blocking=True) + tb.cuda(non_blocking=True)
        s = torch.nn.functional.normalize(s, dim=1)
        tout.copy_(s, non_blocking=True)
        torch.cuda.synchronize()

    torch_gpu()
    np.testing.assert_allclose(tout.numpy()[:4096], ref, rtol=1e-5, atol=1e-6)
    t_torch = _median_s(torch_gpu, 15)
    ROWS.append(
        (
            "combine",
            "torch CUDA (pinned host in/out)",
            f"{t_torch * 1e3:.2f} ms",
            f"{t_torch / t_cuda:.2f}x CUDA kernel",
        )
    )


# ---------------------------------------------------------------------------- encoders
@pytest.fixture(scope="module")
def vitb32_engine() -> Path:
    if _cuda_devices() == 0:  # no GPU side to compare: skip before the (slow) export
        _skip("encoders", "no CUDA device")
    from engine_setup import exported_engine, random_checkpoint

    ckpt = random_checkpoint("ViT-B-32", ROOT / "ckpt_vitb32_random")
    return exported_engine(ckpt, ROOT / "engine_vitb32", precision="fp32,fp16")


ENCODER_CASES = [
    ("ORT CPU fp32 (baseline)", "fp32", "onnxruntime-cpu"),
    ("ORT CUDA fp32", "fp32", "onnxruntime-cuda"),
    ("ORT CUDA fp16", "fp16", "onnxruntime-cuda"),
    ("ORT TensorRT fp16", "fp16", "onnxruntime-tensorrt"),
]
ENC: dict[str, tuple[float, float, np.ndarray]] = {}


@pytest.mark.parametrize(("label", "precision", "backend"), ENCODER_CASES)
def test_encoders(vitb32_engine, label, precision, backend):
    from univl_fast.runtime import Encoder
    from univl_fast.runtime.backends import BackendUnavailable

    if backend != "onnxruntime-cpu" and _cuda_devices() == 0:
        _skip(f"encoder {label}", "no CUDA device")
    try:
        enc = Encoder(
            vitb32_engine, precision=precision, backend=backend, text_runtime="onnxruntime"
        )
    except BackendUnavailable as exc:
        _skip(f"encoder {label}", str(exc))
    from univl_fast.export.samples import builtin_images

    images = (builtin_images() * 64)[:64]
    captions = [f"caption {i}" for i in range(64)]
    query = "what color is the roof of the building next to the tower"
    vec = enc.encode_image_docs(images, captions)
    if label != ENCODER_CASES[0][0]:
        base = ENC.get(ENCODER_CASES[0][0])
        if base is not None:  # same unit vectors as the CPU fp32 engine, within fp16 error
            cos = float(np.min(np.sum(vec * base[2], axis=1)))
            assert cos >= 0.99, f"{label}: min cosine {cos:.4f} vs ORT CPU fp32"
    t_q = _median_s(lambda: enc.encode_queries([query]), 30, warmup=5)
    t_img = _median_s(lambda: enc.encode_image_docs(images, captions), 5, warmup=2)
    ENC[label] = (t_q, t_img, vec)
    base_q, base_img = ENC.get(ENCODER_CASES[0][0], (t_q, t_img, None))[:2]
    ROWS.append(
        (
            "ViT-B-32",
            f"{label}: single query",
            f"{t_q * 1e3:.2f} ms",
            f"{base_q / t_q:.1f}x ORT CPU",
        )
    )
    ROWS.append(
        (
            "ViT-B-32",
            f"{label}: 64 image docs",
            f"{t_img * 1e3:.1f} ms",
            f"{64 / t_img:.0f} docs/s, {base_img / t_img:.1f}x ORT CPU",
        )
    )


# ---------------------------------------------------------------------------- faiss
def test_faiss_gpu_ivfpq_vs_cpu():
    import faiss

    from univl_fast.index import gpu

    if gpu.gpu_count() == 0:
        _skip("faiss IVF-PQ", "faiss has no GPU support here (faiss-cpu, or no GPU)")
    from bench_index import Generator

    gen = Generator(D)
    rng = np.random.default_rng(0)
    half = N_INDEX // 2
    x = np.concatenate([gen.docs(half, "text", rng), gen.docs(N_INDEX - half, "image", rng)])
    q = gen.queries_near(x[rng.choice(N_INDEX, 1000, replace=False)], rng)
    cpu = faiss.index_factory(D, "IVF4096,PQ64", faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    cpu.train(x[rng.choice(N_INDEX, min(N_INDEX, 200_000), replace=False)])
    cpu.add(x)
    t_build = time.perf_counter() - t0
    from univl_fast.index.params import SearchParams

    params = SearchParams(nprobe=32)
    g = gpu.to_gpu(cpu, required=True)
    ivf_params = faiss.SearchParametersIVF()
    ivf_params.nprobe = 32
    _, rows_cpu = cpu.search(q, 10, params=ivf_params)
    _, rows_gpu = g.search(q, 10, params)
    agree = float(
        np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows_cpu, rows_gpu, strict=True)])
    )
    assert agree >= 0.95, f"GPU and CPU IVF-PQ top-10 agree on only {agree:.3f} of results"
    single = iter(range(10**9))
    t_cpu1 = _median_s(lambda: cpu.search(q[next(single) % 1000][None], 10, params=ivf_params), 200)
    t_gpu1 = _median_s(lambda: g.search(q[next(single) % 1000][None], 10, params), 200)
    t_cpu64 = _median_s(lambda: cpu.search(q[:64], 10, params=ivf_params), 20)
    t_gpu64 = _median_s(lambda: g.search(q[:64], 10, params), 20)
    note = f"{N_INDEX:,} x {D}, built on CPU in {t_build:.0f}s, top-10 agreement {agree:.3f}"
    ROWS.append(
        ("faiss IVF4096,PQ64 nprobe 32", "CPU single query", f"{t_cpu1 * 1e3:.3f} ms", note)
    )
    ROWS.append(
        (
            "faiss IVF4096,PQ64 nprobe 32",
            "GPU single query",
            f"{t_gpu1 * 1e3:.3f} ms",
            f"{t_cpu1 / t_gpu1:.1f}x CPU",
        )
    )
    ROWS.append(("faiss IVF4096,PQ64 nprobe 32", "CPU batch 64", f"{t_cpu64 * 1e3:.2f} ms", ""))
    ROWS.append(
        (
            "faiss IVF4096,PQ64 nprobe 32",
            "GPU batch 64",
            f"{t_gpu64 * 1e3:.2f} ms",
            f"{t_cpu64 / t_gpu64:.1f}x CPU",
        )
    )
