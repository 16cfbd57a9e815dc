"""The native int8 towers per kernel build (issue 24's speed table): the AVX2 kernels (forced
with ``UNIVL_FAST_NATIVE_ISA=avx2``: real AVX2 code on this CPU) and the AVX-512 VNNI ones
against the fp32 engine (ONNX Runtime fp32) and ONNX Runtime int8 on the same exported graphs,
in the same run, interleaved, repeated; plus the fraction of one core's int8 GEMM peak the
kernels' GEMMs reach (bench/gemm_peak_probe.cpp, compiled here; ``_C._native_gemm_seconds``).

    .venv/bin/python bench/bench_isa.py --model ViT-B-32 --rounds 5

Writes the table to stdout and, with ``--out``, to a markdown file. Engine: the random-weight
checkpoint exported by bench_encode's cached set-up (``runs/bench/encode/``).

What is timed (Encoder calls, Python strings / PIL images to unit vectors):
  * single query: ``encode_queries([q])`` for bench_encode's ~19-token question; per round the
    median of ``--q-reps`` calls;
  * image documents: ``encode_image_docs`` of 16 pictures + captions (image tower, caption
    batch on the text tower, fused combine); documents/s per round.
Ratios are per round against the fp32 engine of the same round (median, min-max over rounds).
On an AVX-512 machine ONNX Runtime's own kernels follow CPUID: its fp32 runs AVX-512 FMA and
its int8 the VNNI path here, whatever the knob; only the native towers are held to AVX2.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_encode import CAPTIONS, QUERY, engine_encoder, ensure_engine, sample_images

REPO = Path(__file__).resolve().parents[1]
KNOB = "UNIVL_FAST_NATIVE_ISA"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_peak() -> dict[str, float]:
    """{build: GMAC/s of one core} from bench/gemm_peak_probe.cpp ({} without a compiler)."""
    cxx = os.environ.get("CXX", "g++")
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "probe"
        r = subprocess.run(
            [cxx, "-O2", str(REPO / "bench/gemm_peak_probe.cpp"), "-o", str(exe)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            print(f"[bench] no GEMM probe: {r.stderr[-500:]}", file=sys.stderr)
            return {}
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line.strip()}


def encoder_with_isa(engine: Path, isa: str | None, **kw):
    """An Encoder whose native towers run ``isa`` (the knob is read when the towers load)."""
    old = os.environ.get(KNOB)
    if isa:
        os.environ[KNOB] = isa
    try:
        return engine_encoder(engine, **kw)
    finally:
        if old is None:
            os.environ.pop(KNOB, None)
        else:
            os.environ[KNOB] = old


# The GEMMs of one ViT-B-32 transformer block (rows, k, n) (+ the image patch embedding): the
# text tower on one 19-token query; the image tower on one chunk of 96 rows (the kernels take
# rows in chunks of 96: a batch of 16 images is 800 rows; short calls keep the best-of timing
# clear of other jobs' time slices).
GEMM_SHAPES = {
    "text, 1 query (19 rows)": [(19, 512, 1536), (19, 512, 512), (19, 512, 2048), (19, 2048, 512)],
    "image (96-row chunk)": [
        (96, 3072, 768),
        (96, 768, 2304),
        (96, 768, 768),
        (96, 768, 3072),
        (96, 3072, 768),
    ],
}


def gemm_rates(isa: str, reps: int) -> dict[str, float]:
    """GMAC/s of each shape set's GEMMs (one block's; each the best of ``reps`` calls, one
    thread: comparable with one core's peak)."""
    from univl_fast import _C

    out = {}
    for name, shapes in GEMM_SHAPES.items():
        secs = sum(_C._native_gemm_seconds(m, k, n, isa, reps) for m, k, n in shapes)
        out[name] = sum(m * k * n for m, k, n in shapes) / secs / 1e9
    return out


def measure(model: str, rounds: int, q_reps: int, doc_batch: int) -> dict:
    from univl_fast.runtime.native_text import native_isas

    _, engine = ensure_engine(model)
    have = native_isas()
    paths = {"fp32 (ORT)": encoder_with_isa(engine, None, precision="fp32")}
    paths["int8 ORT"] = encoder_with_isa(
        engine, None, precision="int8", text_runtime="onnxruntime", image_runtime="onnxruntime"
    )
    for isa in ("avx2", "avx512_vnni"):
        if isa in have:
            paths[f"int8 native {isa}"] = encoder_with_isa(
                engine, isa, precision="int8", text_runtime="native", image_runtime="native"
            )
    runs_on = {
        name: (enc._towers["text"].isa if enc.text_runtime == "native" else "onnxruntime")
        for name, enc in paths.items()
    }
    images = sample_images(doc_batch)
    caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(doc_batch)]
    for enc in paths.values():  # warm-up
        enc.encode_queries([QUERY])
        enc.encode_image_docs(images, caps)
    single = {k: [] for k in paths}
    docs = {k: [] for k in paths}
    loads = []
    start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for r in range(rounds):
        for name, enc in paths.items():  # interleaved: load drift hits every path alike
            t = []
            for _ in range(q_reps):
                t0 = time.perf_counter()
                enc.encode_queries([QUERY])
                t.append(time.perf_counter() - t0)
            single[name].append(statistics.median(t))
            t0 = time.perf_counter()
            enc.encode_image_docs(images, caps)
            docs[name].append(doc_batch / (time.perf_counter() - t0))
        loads.append(round(os.getloadavg()[0], 2))
        print(f"[round {r + 1}/{rounds}] load {loads[-1]}", file=sys.stderr)
    return {
        "model": model,
        "engine": str(engine),
        "query_tokens": len(paths["fp32 (ORT)"].tokenizer.token_ids(QUERY)),
        "runs_on": runs_on,
        "single": single,
        "docs": docs,
        "loads": loads,
        "start": start,
        "doc_batch": doc_batch,
    }


def _spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def report(res: dict, peak: dict[str, float], gemm: dict[str, dict[str, float]], cmd: str) -> str:
    base_q, base_d = res["single"]["fp32 (ORT)"], res["docs"]["fp32 (ORT)"]
    lines = [
        f"## {res['model']}, random weights: native int8 towers per kernel build",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {cpu_model()} ({os.cpu_count()} CPUs visible), started {res['start']}; "
        f"load average after each round: {res['loads']}  ",
        f"Single query: {res['query_tokens']} tokens, median of the round's calls; image "
        f"documents: batch of {res['doc_batch']} (image tower + captions + combine). Ratios: "
        "per round against fp32 of the same round, median (min-max) over rounds.",
        "",
        "| path | runs on | single query ms | x fp32 | image docs/s | x fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for name in res["single"]:
        q, d = res["single"][name], res["docs"][name]
        xq = [b / v for b, v in zip(base_q, q, strict=True)]
        xd = [v / b for b, v in zip(base_d, d, strict=True)]
        lines.append(
            f"| {name} | {res['runs_on'][name]} | {_spread([1e3 * v for v in q], '.2f')} "
            f"| {_spread(xq, '.2f')} | {_spread(d, '.1f')} | {_spread(xd, '.2f')} |"
        )
    lines += [
        "",
        "Int8 GEMM peak of one core (bench/gemm_peak_probe.cpp: register-only multiply-"
        "accumulate loops, best of 2000 runs) and what the kernels' GEMM reaches on one thread "
        "(`_C._native_gemm_seconds`: each of one transformer block's GEMMs, best of "
        "`--gemm-reps` calls; ViT-B-32's shapes):",
        "",
        "| build | core peak GMAC/s | "
        + " | ".join(f"{k} GMAC/s (% peak)" for k in GEMM_SHAPES)
        + " |",
        "|---|---|" + "---|" * len(GEMM_SHAPES),
    ]
    for isa, rates in gemm.items():
        p = peak.get(isa)
        cells = [f"{v:.1f} ({100 * v / p:.0f}%)" if p else f"{v:.1f}" for v in rates.values()]
        lines.append(f"| {isa} | {p if p else '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--q-reps", type=int, default=15)
    ap.add_argument("--doc-batch", type=int, default=16)
    ap.add_argument("--gemm-reps", type=int, default=100)
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = ap.parse_args()
    cmd = "python bench/bench_isa.py " + " ".join(sys.argv[1:])
    res = measure(args.model, args.rounds, args.q_reps, args.doc_batch)
    peak = gemm_peak()
    gemm = {
        isa: gemm_rates(isa, args.gemm_reps)
        for isa in ("avx2", "avx512_vnni")
        if any(isa == v for v in res["runs_on"].values())
    }
    text = report(res, peak, gemm, cmd)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
