"""Encoder speed (issue 4): the torch-free engine vs open_clip eager, in the same run.

Table form (what bench/results/encode.md reports; rounds interleaved so machine load hits
both sides alike)::

    .venv/bin/python bench/bench_encode.py --model ViT-B-32 --rounds 7

Image documents only (eager vs int8 with each image runtime, decoded pictures and JPEGs)::

    .venv/bin/python bench/bench_encode.py --model ViT-B-32 --images-only --rounds 7

pytest-benchmark form (same measurements, one benchmark per path; compare within a group)::

    .venv/bin/python -m pytest bench/bench_encode.py -q -p no:cacheprovider \
        --benchmark-columns=min,median,mean,rounds --benchmark-group-by=group

What is measured (each from Python strings / PIL images to unit vectors):
  * single query: ``encode_queries([q])`` for a ~20-token question; p50 latency.
    eager = open_clip tokenize (padded to 77, as open_clip does) + ``encode_text`` under
    ``torch.no_grad`` with ``torch.set_num_threads(2)`` + L2 normalize.
  * query batch 64: the same for 64 questions at once; queries/s.
  * image documents: 16 PIL pictures + captions -> Eq. 3 vectors; documents/s.
    eager = open_clip's eval transform + ``encode_image`` + ``encode_text`` (captions padded
    to 77) + sum + L2; engine = ``encode_image_docs`` (Pillow/numpy preprocessing, image
    graph, trimmed caption batch, fused combine kernel).
  * image documents from JPEG files (``--jpeg-docs``, default 32): photo-like JPEGs at
    320-800 px (``tests.generators.photos``) stored as ``imgs.tsv`` + ``imgs.lineidx.new``
    like a user's corpus; documents/s from the file (read by offset, base64-decoded, JPEG
    decoded, preprocessed, encoded, combined) to unit vectors, every path doing that same
    work. ``int8-draft`` decodes JPEGs at a reduced DCT scale (not exact: its min cosine vs
    ``int8`` on the corpus is reported); ``int8-decode-ahead`` decodes the next batch on a
    thread while the tower runs.

Set-up, cached under ``runs/bench/encode/`` (gitignored), made in subprocesses: a random
checkpoint of the model (random weights cost the same as trained ones) exported with
``python -m univl_fast.export --precision fp32,int8``. ``BENCH_ENCODE_CHECKPOINT`` points
at a trained checkpoint dir to benchmark instead (``--model`` is then ignored).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from engine_setup import exported_engine, random_checkpoint

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("BENCH_ENCODE_DIR", REPO / "runs/bench/encode"))
THREADS = 2

QUERY = "what color is the roof of the building next to the eiffel tower in paris at night"
QUESTIONS = [
    "what color is the roof of the building next to the eiffel tower",
    "how many arches does the old stone bridge in the photo have",
    "is the statue in front of the museum holding a torch or a sword",
    "which animal is standing on the left side of the wooden fence",
    "what is written on the red sign above the entrance of the station",
    "are there more than three boats in the harbour on a sunny day",
    "what shape is the window at the top of the lighthouse",
    "does the cathedral have one tower or two towers",
]
CAPTIONS = [
    "A black-and-white photograph of a steam locomotive crossing a viaduct",
    "The cathedral seen from the market square in autumn",
    "Tourists on the bridge at sunset",
    "Lighthouse on a rocky coast, 1950",
]


# ---------------------------------------------------------------------------- set-up (cached)
def ensure_engine(model: str, root: Path = ROOT) -> tuple[Path, Path]:
    """(checkpoint dir, engine dir) for ``model`` (or BENCH_ENCODE_CHECKPOINT)."""
    trained = os.environ.get("BENCH_ENCODE_CHECKPOINT")
    if trained:
        ckpt = Path(trained)
        engine = root / f"engine_{ckpt.name}"
    else:
        ckpt = random_checkpoint(model, root / f"ckpt_{model}_random")
        engine = root / f"engine_{model}"
    return ckpt, exported_engine(ckpt, engine)


def sample_images(n: int = 16) -> list:
    from univl_fast.export.samples import builtin_images

    return builtin_images(n)


# ---------------------------------------------------------------------------- the two paths
class Eager:
    """open_clip eager: what a user would run without this project."""

    def __init__(self, ckpt: Path, threads: int = THREADS):
        import open_clip
        import torch

        from univl_fast.model import UniVLDR

        self.threads = threads
        torch.set_num_threads(threads)
        self.torch = torch
        model = UniVLDR.from_pretrained(ckpt)
        self.clip = model.clip.eval()
        c = model.config
        self.tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=c.context_length)
        self.preprocess = model.preprocess

    def _text(self, texts: list[str]):
        return self.clip.encode_text(self.tokenizer(texts))

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        self.torch.set_num_threads(self.threads)
        with self.torch.no_grad():
            x = self._text(texts)
            return (x / x.norm(dim=-1, keepdim=True)).numpy()

    def encode_image_docs(self, images: list, captions: list[str]) -> np.ndarray:
        self.torch.set_num_threads(self.threads)
        with self.torch.no_grad():
            px = self.torch.stack([self.preprocess(im) for im in images])
            x = self.clip.encode_image(px) + self._text(captions)
            return (x / x.norm(dim=-1, keepdim=True)).numpy()


def engine_encoder(
    engine: Path,
    precision: str,
    spin: bool | None = None,
    text_runtime: str | None = None,
    **kw,
):
    from univl_fast.runtime import Encoder, ThreadSettings

    return Encoder(
        engine,
        precision=precision,
        batch_size=64,
        threads=ThreadSettings(spin=spin),
        text_runtime=text_runtime,
        **kw,
    )


def jpeg_corpus(n: int, root: Path = ROOT):
    """(ImageStore, ids) of ``n`` photo-like JPEGs in imgs.tsv form, written once."""
    from univl_fast.data.images import ImageStore

    sys.path.insert(0, str(REPO))  # the generator lives with the tests (tests/generators)
    from tests.generators.photos import photo_like_jpegs, write_image_corpus

    d = root / f"jpeg_corpus_{n}"
    if not (d / "imgs.lineidx.new").is_file():
        write_image_corpus(d, photo_like_jpegs(n, seed=0))
    store = ImageStore(d / "imgs.tsv", d / "imgs.lineidx.new")
    return store, store.ids()


def encode_from_store(enc, store, ids: list[str], caps: list[str]) -> np.ndarray:
    """File to unit vectors: read each image's bytes from imgs.tsv, then encode (the engine
    decodes bytes itself; eager decodes with Pillow, as a user's open_clip script would)."""
    blobs = [store.read_bytes(i) for i in ids]
    if isinstance(enc, Eager):
        import io

        from PIL import Image

        return enc.encode_image_docs(
            [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs], caps
        )
    return enc.encode_image_docs(blobs, caps)


# ---------------------------------------------------------------------------- table form
def _time(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def measure(
    model: str,
    rounds: int,
    q_reps: int,
    doc_batch: int,
    eager_1t: bool = True,
    jpeg_docs: int = 32,
) -> dict:
    ckpt, engine = ensure_engine(model)
    paths = {"eager": Eager(ckpt)}
    if eager_1t:
        # open_clip with 1 torch thread: on a loaded box, 2 OpenMP threads fighting other jobs
        # for 2 cores collapse far more than ONNX Runtime does; this is the conservative baseline
        paths["eager-1thread"] = Eager(ckpt, threads=1)
    for p in ("fp32", "int8"):
        paths[p] = engine_encoder(engine, p)
    # int8 with the ONNX text graph instead of the native text tower (the default where the
    # CPU has AVX-512 VNNI; paths["int8"].text_runtime says which ran)
    paths["int8-onnxruntime"] = engine_encoder(
        engine, "int8", text_runtime="onnxruntime", image_runtime="onnxruntime"
    )
    # each image runtime by name (paths["int8"].image_runtime: what auto picked)
    paths["int8-ort-image"] = engine_encoder(engine, "int8", image_runtime="onnxruntime")
    paths["int8-native-image"] = engine_encoder(engine, "int8", image_runtime="native")
    if jpeg_docs:
        paths["int8-decode-ahead"] = engine_encoder(engine, "int8", decode_workers=1)
        paths["int8-draft"] = engine_encoder(engine, "int8", jpeg_draft=True)
    # the engine's default spins between the ops of a run; this path blocks instead
    paths["int8-onnxruntime-nospin"] = engine_encoder(
        engine, "int8", spin=False, text_runtime="onnxruntime", image_runtime="onnxruntime"
    )
    queries64 = [QUESTIONS[i % len(QUESTIONS)] + f" {i}" for i in range(64)]
    images = sample_images(doc_batch)
    caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(doc_batch)]
    store, jpeg_ids = jpeg_corpus(jpeg_docs) if jpeg_docs else (None, [])
    jcaps = [CAPTIONS[i % len(CAPTIONS)] for i in range(len(jpeg_ids))]
    vectors = {}
    # warm up every path
    for name, enc in paths.items():
        enc.encode_queries([QUERY])
        enc.encode_queries(queries64)
        enc.encode_image_docs(images, caps)
        if jpeg_ids:
            vectors[name] = encode_from_store(enc, store, jpeg_ids, jcaps)
    single = {k: [] for k in paths}
    batch = {k: [] for k in paths}
    docs = {k: [] for k in paths}
    jdocs = {k: [] for k in paths}
    loads = []
    for r in range(rounds):
        for name, enc in paths.items():  # interleaved: load drift hits every path alike
            single[name] += _time(lambda e=enc: e.encode_queries([QUERY]), q_reps)
            batch[name] += _time(lambda e=enc: e.encode_queries(queries64), 1)
            docs[name] += _time(lambda e=enc: e.encode_image_docs(images, caps), 1)
            if jpeg_ids:
                jdocs[name] += _time(lambda e=enc: encode_from_store(e, store, jpeg_ids, jcaps), 1)
        loads.append(round(os.getloadavg()[0], 1))
        print(f"[round {r + 1}/{rounds}] load {loads[-1]}", file=sys.stderr)
    ntok = len(paths["int8"].tokenizer.token_ids(QUERY))
    trained = os.environ.get("BENCH_ENCODE_CHECKPOINT")
    res = {
        "model": f"{Path(trained).name} (trained checkpoint)" if trained else model,
        "engine": str(engine),
        "query_tokens": ntok,
        "int8_text_runtime": paths["int8"].text_runtime,
        "int8_image_runtime": paths["int8"].image_runtime,
        "jpeg_docs": len(jpeg_ids),
        "draft_min_cosine": (
            float((vectors["int8"] * vectors["int8-draft"]).sum(1).min()) if jpeg_ids else None
        ),
        "doc_batch": doc_batch,
        "loads": loads,
        "paths": {},
    }
    for name in paths:
        res["paths"][name] = {
            "single_min_ms": 1e3 * min(single[name]),
            "batch64_best_qps": 64 / min(batch[name]),
            "docs_best_per_s": doc_batch / min(docs[name]),
            "single_p50_ms": 1e3 * statistics.median(single[name]),
            "single_p90_ms": 1e3 * float(np.percentile(single[name], 90)),
            "batch64_qps": 64 / statistics.median(batch[name]),
            "docs_per_s": doc_batch / statistics.median(docs[name]),
        }
        if jpeg_ids:
            res["paths"][name]["jpeg_docs_per_s"] = len(jpeg_ids) / statistics.median(jdocs[name])
            res["paths"][name]["jpeg_docs_best_per_s"] = len(jpeg_ids) / min(jdocs[name])
    return res


def measure_images(model: str, rounds: int, doc_batch: int, jpeg_docs: int = 32) -> dict:
    """Image documents only (``--images-only``): open_clip eager (2 threads) vs the int8 engine
    with each image runtime named (native, ONNX Runtime) and as ``auto`` picks, from decoded
    pictures and from the JPEG corpus, rounds interleaved."""
    ckpt, engine = ensure_engine(model)
    paths = {
        "eager": Eager(ckpt),
        "int8": engine_encoder(engine, "int8"),
        "int8-native-image": engine_encoder(engine, "int8", image_runtime="native"),
        "int8-ort-image": engine_encoder(engine, "int8", image_runtime="onnxruntime"),
    }
    images = sample_images(doc_batch)
    caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(doc_batch)]
    store, jpeg_ids = jpeg_corpus(jpeg_docs) if jpeg_docs else (None, [])
    jcaps = [CAPTIONS[i % len(CAPTIONS)] for i in range(len(jpeg_ids))]
    docs: dict[str, list[float]] = {k: [] for k in paths}
    jdocs: dict[str, list[float]] = {k: [] for k in paths}
    for enc in paths.values():  # warm-up
        enc.encode_image_docs(images, caps)
    loads = []
    for r in range(rounds):
        for name, enc in paths.items():  # interleaved: load drift hits every path alike
            docs[name] += _time(lambda e=enc: e.encode_image_docs(images, caps), 1)
            if jpeg_ids:
                jdocs[name] += _time(lambda e=enc: encode_from_store(e, store, jpeg_ids, jcaps), 1)
        loads.append(round(os.getloadavg()[0], 1))
        print(f"[round {r + 1}/{rounds}] load {loads[-1]}", file=sys.stderr)
    res = {
        "model": model,
        "doc_batch": doc_batch,
        "jpeg_docs": len(jpeg_ids),
        "int8_image_runtime": paths["int8"].image_runtime,
        "auto_reason": paths["int8"].runtime_reasons.get("image"),
        "loads": loads,
        "paths": {},
    }
    for name in paths:
        row = {
            "docs_per_s": doc_batch / statistics.median(docs[name]),
            "docs_best_per_s": doc_batch / min(docs[name]),
        }
        if jpeg_ids:
            row["jpeg_docs_per_s"] = len(jpeg_ids) / statistics.median(jdocs[name])
            row["jpeg_docs_best_per_s"] = len(jpeg_ids) / min(jdocs[name])
        res["paths"][name] = row
    return res


def report_images(res: dict) -> str:
    e = res["paths"]["eager"]
    cols = [("docs_per_s", "decoded docs/s (median)"), ("docs_best_per_s", "best")]
    if res["jpeg_docs"]:
        cols += [("jpeg_docs_per_s", "JPEG docs/s (median)"), ("jpeg_docs_best_per_s", "best")]
    lines = [
        f"### {res['model']} image documents (batches of {res['doc_batch']} decoded pictures; "
        f"{res['jpeg_docs']} photo-like JPEGs from imgs.tsv)",
        "",
        "| path | " + " | ".join(f"{title} | x eager" for _, title in cols) + " |",
        "|---|" + "---|---|" * len(cols),
    ]
    for name, p in res["paths"].items():
        cells = [f"{p[k]:.1f} | {p[k] / e[k]:.1f}" for k, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"int8 image tower (auto): {res['int8_image_runtime']}"
        + (f" ({res['auto_reason']})" if res["auto_reason"] else ""),
        f"1-minute load average after each round: {res['loads']}",
    ]
    return "\n".join(lines)


def report(res: dict) -> str:
    e = res["paths"]["eager"]
    lines = [
        f"### {res['model']} (query = {res['query_tokens']} tokens, image docs in batches of "
        f"{res['doc_batch']})",
        "",
        "Median (p50) and best-of-run (min time: the least load-sensitive figure) per path.",
        "",
        "| path | single query p50 ms | x eager | min ms | x eager | batch-64 q/s (median) "
        "| x eager | best | x eager | image docs/s (median) | x eager | best | x eager |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in res["paths"].items():
        lines.append(
            f"| {name} | {p['single_p50_ms']:.2f} | {e['single_p50_ms'] / p['single_p50_ms']:.1f} "
            f"| {p['single_min_ms']:.2f} | {e['single_min_ms'] / p['single_min_ms']:.1f} "
            f"| {p['batch64_qps']:.0f} | {p['batch64_qps'] / e['batch64_qps']:.1f} "
            f"| {p['batch64_best_qps']:.0f} | {p['batch64_best_qps'] / e['batch64_best_qps']:.1f} "
            f"| {p['docs_per_s']:.1f} | {p['docs_per_s'] / e['docs_per_s']:.1f} "
            f"| {p['docs_best_per_s']:.1f} | {p['docs_best_per_s'] / e['docs_best_per_s']:.1f} |"
        )
    if res["jpeg_docs"]:
        lines += [
            "",
            f"Image documents from {res['jpeg_docs']} photo-like JPEGs (320-800 px) in imgs.tsv, "
            "file to unit vectors:",
            "",
            "| path | docs/s (median) | x eager | best | x eager |",
            "|---|---|---|---|---|",
        ]
        for name, p in res["paths"].items():
            lines.append(
                f"| {name} | {p['jpeg_docs_per_s']:.1f} "
                f"| {p['jpeg_docs_per_s'] / e['jpeg_docs_per_s']:.1f} "
                f"| {p['jpeg_docs_best_per_s']:.1f} "
                f"| {p['jpeg_docs_best_per_s'] / e['jpeg_docs_best_per_s']:.1f} |"
            )
        lines.append("")
        lines.append(f"JPEG draft decoding: min cosine vs exact {res['draft_min_cosine']:.5f}")
    lines.append("")
    lines.append(f"int8 text tower: {res['int8_text_runtime']}")
    lines.append(f"int8 image tower: {res['int8_image_runtime']}")
    lines.append(f"1-minute load average after each round: {res['loads']}")
    return "\n".join(lines)


def quant_study(model: str, reps: int = 30) -> str:
    """int8 variants of both towers: min/mean cosine vs PyTorch (built-in sample) and speed vs
    the engine's fp32 graph (same run). Text: one ~20-token query; image: a batch of 16."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from univl_fast.export import verify
    from univl_fast.export.samples import builtin_sample
    from univl_fast.model import UniVLDR
    from univl_fast.runtime.preprocess import ImagePreprocessor, PreprocessConfig
    from univl_fast.runtime.tokenizer import ClipTokenizer

    ckpt, engine = ensure_engine(model)
    clip = UniVLDR.from_pretrained(ckpt).clip.eval()
    m = __import__("json").loads((engine / "manifest.json").read_text())
    tok = ClipTokenizer(engine / m["tokenizer"]["vocab_file"])
    sample = builtin_sample()
    pixels = ImagePreprocessor(PreprocessConfig(m["preprocess"]["image_size"]))(sample.images)
    refs = {
        "text": verify.text_reference(clip, tok, sample.texts),
        "image": verify.image_reference(clip, pixels),
    }
    q_ids, _ = tok([QUERY])
    px16 = np.concatenate([pixels] * 3)[:16]
    variants = {
        "text": [
            ("MatMul+Attention", True, False),
            ("MatMul+Attention", False, False),
            ("MatMul+Attention", True, True),
            ("MatMul+Attention+Gather", True, False),
            ("MatMul", True, False),
        ],
        "image": [
            ("MatMul+Attention", True, False),
            ("MatMul+Attention", False, False),
            ("MatMul+Attention+Conv", True, False),
            ("MatMul", True, False),
        ],
    }
    tmp = ROOT / "quant_study"
    tmp.mkdir(parents=True, exist_ok=True)
    rows = [
        "| tower | op types | per-channel | reduce_range | size MB | min cos | mean cos "
        "| ms (fp32 ms) | x fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def session(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    for tower, vs in variants.items():
        src = engine / f"{tower}_fp32.onnx"
        feed_name = "input_ids" if tower == "text" else "pixel_values"
        x = q_ids if tower == "text" else px16
        base = session(src)
        for i, (ops, per_channel, rr) in enumerate(vs):
            dst = tmp / f"{tower}_{i}.onnx"
            quantize_dynamic(
                src,
                dst,
                op_types_to_quantize=ops.split("+"),
                per_channel=per_channel,
                reduce_range=rr,
                weight_type=QuantType.QInt8,
                extra_options={"MatMulConstBOnly": True},
            )
            data = onnx.load(dst).SerializeToString()
            kw = (
                {"tokenizer": tok, "texts": sample.texts} if tower == "text" else {"pixels": pixels}
            )
            p = verify.check_graph(data, tower, refs[tower], 0.99, **kw)
            sess = session(dst)
            n = reps if tower == "text" else max(3, reps // 6)
            for s_ in (base, sess):
                s_.run(None, {feed_name: x})
            tb, tq = [], []
            for _ in range(n):  # interleaved
                tb += _time(lambda f={feed_name: x}: base.run(None, f), 1)  # noqa: B023
                tq += _time(lambda s_=sess, f={feed_name: x}: s_.run(None, f), 1)
            mb, mq = 1e3 * statistics.median(tb), 1e3 * statistics.median(tq)
            rows.append(
                f"| {tower} | {ops} | {per_channel} | {rr} | "
                f"{dst.stat().st_size / 1e6:.0f} | {p.min_cosine:.5f} | "
                f"{p.mean_cosine:.5f} | {mq:.2f} ({mb:.2f}) | {mb / mq:.2f} |"
            )
            print(rows[-1], file=sys.stderr)
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32", help="open_clip name or univl-tiny")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--query-reps", type=int, default=15, help="single queries per round")
    ap.add_argument("--doc-batch", type=int, default=16)
    ap.add_argument(
        "--jpeg-docs",
        type=int,
        default=32,
        help="photo-like JPEG documents read from imgs.tsv per round (0: skip)",
    )
    ap.add_argument(
        "--no-eager-1thread", action="store_true", help="skip the 1-thread open_clip baseline"
    )
    ap.add_argument(
        "--quant-study",
        action="store_true",
        help="compare int8 quantization variants (cosine + speed) instead",
    )
    ap.add_argument(
        "--images-only",
        action="store_true",
        help="image documents only: eager vs int8 with the native / ONNX Runtime image tower",
    )
    args = ap.parse_args()
    if args.images_only:
        print(f"load before {os.getloadavg()}", file=sys.stderr)
        print(
            report_images(measure_images(args.model, args.rounds, args.doc_batch, args.jpeg_docs))
        )
        print(f"\nload after: {os.getloadavg()}")
        return
    if args.quant_study:
        print(quant_study(args.model))
        print(f"\nload after: {os.getloadavg()}")
        return
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load before {os.getloadavg()}",
        file=sys.stderr,
    )
    res = measure(
        args.model,
        args.rounds,
        args.query_reps,
        args.doc_batch,
        not args.no_eager_1thread,
        args.jpeg_docs,
    )
    print(report(res))
    print(f"\nload after: {os.getloadavg()}")


# ---------------------------------------------------------------------------- pytest-benchmark
try:
    import pytest
except ImportError:  # pragma: no cover - table form only
    pytest = None

if pytest is not None:
    MODELS = os.environ.get("BENCH_ENCODE_MODELS", "ViT-B-32,univl-tiny").split(",")
    PATHS = ["eager", "fp32", "int8", "int8-onnxruntime"]

    @pytest.fixture(scope="module", params=MODELS)
    def setup(request):
        ckpt, engine = ensure_engine(request.param)
        paths = {"eager": Eager(ckpt)}
        for p in ("fp32", "int8"):
            paths[p] = engine_encoder(engine, p)
        paths["int8-onnxruntime"] = engine_encoder(
            engine, "int8", text_runtime="onnxruntime", image_runtime="onnxruntime"
        )
        return request.param, paths

    @pytest.mark.parametrize("path", PATHS)
    def test_single_query(benchmark, setup, path):
        model, paths = setup
        benchmark.group = f"{model} single query (~20 tokens)"
        enc = paths[path]
        out = benchmark.pedantic(enc.encode_queries, args=([QUERY],), rounds=40, warmup_rounds=3)
        assert out.shape[0] == 1

    @pytest.mark.parametrize("path", PATHS)
    def test_query_batch_64(benchmark, setup, path):
        model, paths = setup
        benchmark.group = f"{model} query batch 64"
        qs = [QUESTIONS[i % len(QUESTIONS)] + f" {i}" for i in range(64)]
        out = benchmark.pedantic(paths[path].encode_queries, args=(qs,), rounds=5, warmup_rounds=1)
        assert out.shape[0] == 64

    @pytest.mark.parametrize("path", PATHS)
    def test_image_docs_16(benchmark, setup, path):
        model, paths = setup
        benchmark.group = f"{model} image docs, batch 16"
        images = sample_images(16)
        caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(16)]
        out = benchmark.pedantic(
            paths[path].encode_image_docs, args=(images, caps), rounds=5, warmup_rounds=1
        )
        assert out.shape[0] == 16


if __name__ == "__main__":
    main()
