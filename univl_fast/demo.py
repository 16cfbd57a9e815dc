"""``univl-fast demo``: the whole flow on the built-in benchmark, with progress throughout.

    univl-fast demo [--workdir runs/demo] [--scale small] [--fresh]

Stages (each prints a banner with the elapsed time; tqdm bars inside):

 1. data      the synthetic benchmark (``univl_fast.data.synth.generate``)
 2. stage1    train with in-batch negatives (CLIP-DPR)
 3. mine      top-100 hard negatives from the stage-1 model
 4. stage2    train with modality-balanced hard negatives (UniVL-DR)
 5. export    ONNX fp32 + int8 engine, verified against PyTorch
 6. index     encode the corpus with the fp32 and the int8 engine; build and tune an index each
 7. eval      PyTorch exact search vs fp32 engine vs int8 engine (paper-style table)
 8. examples  one text-answerable and one image-answerable test query, top results
 9. report    the paper's Figure 4 for stage 1 and stage 2 (t-SNE of 30 queries, 30 text and
              30 image docs: ``embeddings.png``) and ``report.html``, one self-contained page

Re-running resumes: a stage whose outputs are complete (``<workdir>/state/<stage>.json``
written after it finished) is skipped; an interrupted training stage resumes from its saved
training state. ``--fresh`` starts over. Results: ``<workdir>/results.md`` and
``results.json``; ``report.html`` (its path is printed last).

A precision the export could not verify on this host (int8 where ONNX Runtime's int8 kernels
saturate: AVX2-only x86) is not a failure: the export stage says so in one line with the
manifest's reason, the later stages index, evaluate and search with the precisions that were
verified (fp32 always is: its failure stops the export), and the closing summary names the
precision the demo ended with and why.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from univl_fast.utils.io import atomic_write_json, atomic_write_text, read_json

PRECISIONS = ("fp32", "int8")  # what the demo exports, indexes and evaluates (where verified)
STAGES = ("data", "stage1", "mine", "stage2", "export", "index", "eval", "examples", "report")
FIGURE_ITEMS = 30  # queries, text docs and image docs in the Figure 4 plot (the paper's 30)
MARKER = "univl-fast-demo.json"  # identifies a demo workdir (so --fresh never wipes another dir)
# Training budget: 0 = the schedule univl_fast.train.config sets for the model (for univl-tiny
# its TINY_OVERRIDES, sized for the demo's 15-minute budget: bench/results/train.md); a
# positive value caps the optimizer steps of that stage.
DEFAULT_STAGE1_STEPS = 0
DEFAULT_STAGE2_STEPS = 0
TABLE_KEYS = ("MRR@10", "NDCG@10", "MRR@20", "NDCG@20", "Recall@20", "Recall@100", "image_share@10")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir", default="runs/demo", help="where everything is written (default runs/demo)"
    )
    p.add_argument(
        "--scale",
        default="small",
        choices=["tiny", "small", "medium"],
        help="size of the built-in benchmark (default small)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="delete the workdir's outputs first")
    p.add_argument(
        "--factory",
        default=None,
        help="faiss factory for the index (default: chosen from the corpus size)",
    )
    p.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="index tuning target: recall@10 against exact search",
    )
    p.add_argument(
        "--stage1-steps",
        type=int,
        default=DEFAULT_STAGE1_STEPS,
        help="cap on the optimizer steps of stage 1 (default 0: the training config's "
        "schedule, sized for the demo's budget)",
    )
    p.add_argument(
        "--stage2-steps",
        type=int,
        default=DEFAULT_STAGE2_STEPS,
        help="cap on the optimizer steps of stage 2 (default 0: the training config's schedule)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for training (default: torch's choice)",
    )


class Demo:
    """Runs the stages in order, skipping those already complete."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.data = self.work / "data"
        self.stage1 = self.work / "checkpoints" / "stage1"
        self.mined = self.work / "mined"
        self.stage2 = self.work / "checkpoints" / "stage2"
        self.engine = self.work / "engine"
        self.index = {p: self.work / f"index_{p}" for p in PRECISIONS}
        self.state = self.work / "state"
        self.t0 = time.perf_counter()
        self.results: dict[str, Any] = {}
        # precision -> why it cannot serve here (None: verified); from the engine's manifest
        self._routes: dict[str, str | None] | None = None

    # ------------------------------------------------------------------ bookkeeping
    def log(self, msg: str) -> None:
        print(f"[demo {self._elapsed()}] {msg}", file=sys.stderr, flush=True)

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def _marker(self, stage: str) -> Path:
        return self.state / f"{stage}.json"

    def done(self, stage: str) -> dict[str, Any] | None:
        path = self._marker(stage)
        return read_json(path) if path.is_file() else None

    def run_stage(self, number: int, stage: str, title: str, fn: Callable[[], dict]) -> dict:
        info = self.done(stage)
        banner = f"[{number}/{len(STAGES)}] {stage}: {title}"
        if info is not None:
            self.log(f"{banner} -- complete, skipped (delete {self._marker(stage)} to redo)")
            return info
        self.log(f"{banner} ...")
        t = time.perf_counter()
        info = fn() or {}
        info["seconds"] = round(time.perf_counter() - t, 1)
        atomic_write_json(self._marker(stage), info)
        self.log(f"{banner} -- done in {info['seconds']:.1f}s")
        return info

    def prepare(self) -> None:
        marker = self.work / MARKER
        if self.args.fresh and self.work.exists():
            if not marker.is_file() and any(self.work.iterdir()):
                raise SystemExit(
                    f"univl-fast demo: --fresh refuses to delete {self.work}: it is "
                    f"not a demo workdir (no {MARKER})"
                )
            self.log(f"--fresh: removing {self.work}")
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        settings = {
            "scale": self.args.scale,
            "seed": self.args.seed,
            "factory": self.args.factory,
            "target_recall": self.args.target_recall,
            "stage1_steps": self.args.stage1_steps,
            "stage2_steps": self.args.stage2_steps,
        }
        if marker.is_file():
            before = read_json(marker).get("settings", {})
            if before != settings:
                raise SystemExit(
                    f"univl-fast demo: {self.work} was made with {before}, now asked for "
                    f"{settings}; use --fresh or another --workdir"
                )
        else:
            atomic_write_json(marker, {"settings": settings})
        self.state.mkdir(exist_ok=True)

    # ------------------------------------------------------------------ stages
    def make_data(self) -> dict:
        from univl_fast.data.synth import generate

        generate(self.data, scale=self.args.scale, seed=self.args.seed, progress=True)
        from univl_fast.data import DatasetDir

        ds = DatasetDir(self.data)
        return {
            "texts": len(ds.text_ids()),
            "images": len(ds.image_ids()),
            "test_queries": len(ds.qrels("test")),
        }

    def _train(self, out: Path, stage: str, **kw: Any) -> dict:
        from univl_fast.train import train_stage

        train_stage(
            self.data,
            out,
            stage=stage,
            resume=True,
            progress=True,
            seed=self.args.seed,
            torch_threads=self.args.threads,
            **kw,
        )
        metrics_path = out / "metrics.json"
        return {
            "checkpoint": str(out),
            "dev": read_json(metrics_path) if metrics_path.is_file() else {},
        }

    def train1(self) -> dict:
        return self._train(self.stage1, "inbatch", max_steps=self.args.stage1_steps or None)

    def mine(self) -> dict:
        from univl_fast.train import mine_negatives

        mine_negatives(self.data, self.stage1, out_dir=self.mined)
        return {"mined_dir": str(self.mined)}

    def train2(self) -> dict:
        return self._train(
            self.stage2,
            "hardneg",
            init=str(self.stage1),
            mined_dir=str(self.mined),
            max_steps=self.args.stage2_steps or None,
        )

    def export(self) -> dict:
        _cli(
            [
                "export",
                "--checkpoint",
                str(self.stage2),
                "--out",
                str(self.engine),
                "--precision",
                "fp32,int8",
                "--data",
                str(self.data),
            ],
            "export",
        )
        manifest = read_json(self.engine / "manifest.json")
        self._routes = None
        for precision, why in self.routes().items():
            if why is not None:
                self.log(f"  {precision}: {why}; going on with {self.best()}")
        return {
            "engine": str(self.engine),
            "parity": manifest.get("parity", {}),
            "precisions": self.routes(),
        }

    # ------------------------------------------------------------------ precisions
    def routes(self) -> dict[str, str | None]:
        """Each demo precision -> None where the engine may serve it on this host, else why
        not (read from the engine's manifest: its graphs and their recorded parity)."""
        if self._routes is None:
            self._routes = precision_routes(self.engine)
        return self._routes

    def served(self) -> list[str]:
        """The precisions indexed and evaluated: those verified, in PRECISIONS order."""
        return [p for p, why in self.routes().items() if why is None]

    def best(self) -> str:
        """The fastest verified precision on the CPU (int8 where verified, else fp32)."""
        served = self.served()
        return "int8" if "int8" in served else served[0]

    def _drop(self, precision: str, why: str) -> None:
        """``precision`` turned out unusable at a later stage (its engine refused to load it):
        one line, and the demo goes on without it."""
        self.routes()[precision] = why
        self.log(f"  {precision}: {why}; going on with {self.best()}")

    def build_indexes(self) -> dict:
        from univl_fast.runtime.manifest import EngineError

        out = {}
        for precision in self.served():
            path = self.index[precision]
            self.log(f"  corpus encoded with the {precision} engine -> {path}")
            try:
                m = build_engine_index(
                    self.engine,
                    self.data,
                    path,
                    precision,
                    factory=self.args.factory,
                    target_recall=self.args.target_recall,
                    cache=self.work / "vectors",
                )
            except EngineError as exc:
                if precision == "fp32":
                    raise
                self._drop(precision, f"the engine refused it on this host ({exc})")
                continue
            out[precision] = {k: m.get(k) for k in ("factory", "search_params", "memory")}
            out[precision]["recall_at_10"] = m.get("tuning", {}).get("recall_at_k")
        out["precisions"] = dict(self.routes())
        return out

    def evaluate(self) -> dict:
        from univl_fast.data import DatasetDir
        from univl_fast.evaluation.engine import evaluate_engine
        from univl_fast.search.engine import load
        from univl_fast.train import evaluate_checkpoint

        ds = DatasetDir(self.data)
        queries, qrels = ds.queries("test"), ds.qrels("test")
        rows: dict[str, Any] = {}
        self.log("  PyTorch, stage 1 (CLIP-DPR), exact search")
        rows["PyTorch stage 1 (in-batch), exact"] = evaluate_checkpoint(
            self.stage1, self.data, split="test", by_modality=True
        )
        self.log("  PyTorch, stage 2 (UniVL-DR), exact search")
        rows["PyTorch stage 2 (UniVL-DR), exact"] = evaluate_checkpoint(
            self.stage2, self.data, split="test", by_modality=True
        )
        for precision in self.served():
            if not (self.index[precision] / "manifest.json").is_file():
                continue  # refused at the index stage (said so there)
            self.log(f"  {precision} engine + tuned index")
            with load(
                self.engine, index=self.index[precision], precision=precision, batching=False
            ) as eng:
                factory = eng.index.manifest.get("factory")
                rows[f"{precision} engine + index ({factory})"] = evaluate_engine(
                    eng, queries, qrels, by_modality=True
                )
        atomic_write_json(self.work / "results.json", rows)
        table = results_table(rows)
        atomic_write_text(self.work / "results.md", table + "\n")
        return {"rows": rows}

    def examples(self) -> dict:
        from univl_fast.data import DatasetDir
        from univl_fast.search.engine import load

        ds = DatasetDir(self.data)
        texts = {d.doc_id: d.text for d in ds.text_docs()}
        texts.update({d.doc_id: d.caption for d in ds.image_docs()})
        queries = ds.queries("test")
        picked = [next(q for q in queries if q.modality == m) for m in ("text", "image")]
        shown = []
        precision = self.final_precision()
        with load(self.engine, index=self.index[precision], precision=precision) as eng:
            hits = eng.search([q.text for q in picked], k=100)
        for q, row in zip(picked, hits, strict=True):
            positives = set(q.txt_pos) | set(q.img_pos)
            ranks = [r for r, h in enumerate(row, 1) if h.doc_id in positives]
            shown.append(
                {
                    "qid": q.qid,
                    "query": q.text,
                    "answerable_by": q.modality,
                    "positive_rank": ranks[0] if ranks else None,
                    "top": [
                        {
                            "rank": r,
                            "doc_id": h.doc_id,
                            "modality": h.modality,
                            "score": round(h.score, 4),
                            "positive": h.doc_id in positives,
                            "text": texts.get(h.doc_id, ""),
                        }
                        for r, h in enumerate(row[:5], 1)
                    ],
                }
            )
        atomic_write_json(self.work / "examples.json", shown)
        return {"examples": shown, "precision": precision}

    def final_precision(self) -> str:
        """The precision the demo ends with: the best verified one whose index was built."""
        built = [p for p in self.served() if (self.index[p] / "manifest.json").is_file()]
        return "int8" if "int8" in built else "fp32"

    def precision_summary(self) -> str:
        """One line: the precision the demo ended with, and why not a faster one."""
        final = self.final_precision()
        line = f"engine precision: {final}"
        if final == "int8":
            return line + " (its parity with PyTorch was verified at export on this host)"
        why = self.routes().get("int8") or "its index was not built"
        return f"{line}; int8: {why}"

    def report(self) -> dict:
        from univl_fast.data import DatasetDir
        from univl_fast.reports.embedding_plot import plot_embeddings
        from univl_fast.reports.page import build_report

        ds = DatasetDir(self.data)
        n = min(FIGURE_ITEMS, len(ds.qrels("test")), len(ds.text_ids()), len(ds.image_ids()))
        fig = self.work / "embeddings.png"
        plot_embeddings(
            [self.stage1, self.stage2],
            self.data,
            fig,
            labels=["In-batch (CLIP-DPR, stage 1)", "Balanced + in-batch (UniVL-DR, stage 2)"],
            n=n,
            seed=self.args.seed,
        )
        page = build_report(self.work, title="UniVL-DR demo on the built-in benchmark")
        return {"figure": str(fig), "report": str(page)}

    # ------------------------------------------------------------------ driver
    def run(self) -> int:
        self.prepare()
        self.log(f"workdir {self.work} (scale {self.args.scale}, seed {self.args.seed})")
        plan: list[tuple[str, str, Callable[[], dict]]] = [
            ("data", f"built-in benchmark ({self.args.scale})", self.make_data),
            ("stage1", "train with in-batch negatives (CLIP-DPR)", self.train1),
            ("mine", "mine top-100 hard negatives with the stage-1 model", self.mine),
            ("stage2", "train with modality-balanced hard negatives (UniVL-DR)", self.train2),
            ("export", "ONNX fp32 + int8 engine, verified against PyTorch", self.export),
            (
                "index",
                "encode the corpus with each verified precision; build and tune the index",
                self.build_indexes,
            ),
            ("eval", "PyTorch exact vs the engine at each verified precision", self.evaluate),
            ("examples", "example searches with the best verified engine", self.examples),
            ("report", "Figure 4 (t-SNE of the embedding space) and report.html", self.report),
        ]
        infos = {}
        for number, (stage, title, fn) in enumerate(plan, 1):
            infos[stage] = self.run_stage(number, stage, title, fn)
        print()
        print(
            f"UniVL-DR on the built-in benchmark ({self.args.scale}), test split, "
            f"{infos['data'].get('test_queries', '?')} queries"
        )
        print(results_table(infos["eval"]["rows"]))
        print()
        for ex in infos["examples"]["examples"]:
            print(format_example(ex))
            print()
        total = time.perf_counter() - self.t0
        print(
            f"demo finished in {total / 60:.1f} min; outputs in {self.work} "
            f"(results.md, results.json, examples.json, embeddings.png)"
        )
        print(self.precision_summary())
        print(f"report: {infos['report']['report']}")
        final = self.final_precision()
        print(
            "search it in a browser: .venv/bin/univl-fast serve "
            f"--engine {_shown(self.engine)} --index {_shown(self.index[final])} "
            f"--data {_shown(self.data)}  then open http://127.0.0.1:8080/"
        )
        return 0


def precision_routes(engine_dir: Path) -> dict[str, str | None]:
    """Each of PRECISIONS -> None where ``engine_dir`` has verified graphs (for int8: graphs or
    native towers) of it for both towers on the CPU (written, and their parity and the
    image-document vector's passed at export),
    else the reason in one phrase (from the manifest's parity block)."""
    from univl_fast.runtime import selection
    from univl_fast.runtime.manifest import load_manifest

    manifest = load_manifest(engine_dir)
    out: dict[str, str | None] = {}
    for precision in PRECISIONS:
        problem = selection.precision_problem(manifest, precision)
        out[precision] = None if problem is None else f"no verified route on this host ({problem})"
    if out["fp32"] is not None:  # the exporter stops instead of writing such an engine
        raise SystemExit(
            f"univl-fast demo: the engine {engine_dir} has no usable fp32: {out['fp32']}"
        )
    return out


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter to type)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _cached(path: Path, make: Callable[[], Any]) -> Any:
    """np.load(path) if it exists, else make() saved atomically there (resumable stages)."""
    import io

    import numpy as np

    if path.is_file():
        return np.load(path, allow_pickle=False)
    arr = make()
    buf = io.BytesIO()
    np.save(buf, arr)
    from univl_fast.utils.io import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
    return arr


def _rows(res: Any, n: int, dim: int) -> Any:
    """An EncodeResult -> (n, dim) float32 with zero rows where an item failed."""
    import numpy as np

    out = np.zeros((n, dim), np.float32)
    out[res.indices] = res.embeddings
    return out


def build_engine_index(
    engine_dir: Path,
    data_dir: Path,
    out: Path,
    precision: str,
    factory: str | None = None,
    target_recall: float = 0.95,
    cache: Path | None = None,
    batch: int = 256,
) -> dict:
    """Encode every doc of ``data_dir`` with the engine at ``precision`` and build a tuned
    index in ``out`` (tuning queries: the dev questions). Encoded vectors are cached as .npy
    under ``cache`` so an interrupted stage resumes. Returns the index manifest."""
    import numpy as np
    from tqdm import tqdm

    from univl_fast.data import DatasetDir
    from univl_fast.index import build_index, save_index
    from univl_fast.runtime import Encoder

    ds = DatasetDir(data_dir)
    enc = Encoder(engine_dir, precision=precision)
    cache = cache or out
    cache.mkdir(parents=True, exist_ok=True)
    texts = ds.text_docs()
    images = ds.image_docs()

    def encode_texts() -> np.ndarray:
        parts = []
        for s in tqdm(
            range(0, len(texts), batch),
            desc=f"text docs ({precision})",
            unit="batch",
            file=sys.stderr,
        ):
            n = min(batch, len(texts) - s)
            res = enc.encode_text_docs([t.text for t in texts[s : s + n]], on_error="skip")
            for err in res.errors:
                print(
                    f"  skipped text doc {texts[s + err.index].doc_id}: {err.reason}",
                    file=sys.stderr,
                )
            parts.append(_rows(res, n, enc.dim))
        return np.concatenate(parts) if parts else np.zeros((0, enc.dim), np.float32)

    def encode_images() -> np.ndarray:
        parts = []
        store = ds.images
        for s in tqdm(
            range(0, len(images), batch),
            desc=f"image docs ({precision})",
            unit="batch",
            file=sys.stderr,
        ):
            chunk = images[s : s + batch]
            res = enc.encode_image_docs(
                [store.read_bytes(d.doc_id) for d in chunk],
                [d.caption for d in chunk],
                on_error="skip",
            )
            for err in res.errors:
                print(
                    f"  skipped image doc {chunk[err.index].doc_id}: {err.reason}", file=sys.stderr
                )
            parts.append(_rows(res, len(chunk), enc.dim))
        return np.concatenate(parts) if parts else np.zeros((0, enc.dim), np.float32)

    tv = _cached(cache / f"text_docs_{precision}.npy", encode_texts)
    iv = _cached(cache / f"image_docs_{precision}.npy", encode_images)
    dev = [q.text for q in ds.queries("dev")]
    tune = enc.encode_queries(dev) if dev else None
    vectors = np.ascontiguousarray(np.concatenate([tv, iv]), dtype=np.float32)
    ids = [t.doc_id for t in texts] + [d.doc_id for d in images]
    mods = ["text"] * len(texts) + ["image"] * len(images)
    keep = np.linalg.norm(vectors, axis=1) > 0.5  # docs that failed to encode are zero rows
    if not keep.all():
        print(
            f"  {int((~keep).sum())} docs could not be encoded and are left out of the index",
            file=sys.stderr,
        )
        vectors = np.ascontiguousarray(vectors[keep])
        ids = [d for d, k in zip(ids, keep, strict=True) if k]
        mods = [m for m, k in zip(mods, keep, strict=True) if k]
    idx = build_index(
        vectors,
        ids,
        mods,
        factory=factory,
        target_recall=target_recall,
        tune_queries=tune,
        encoder=enc,
        progress=True,
    )
    save_index(idx, out)
    return dict(idx.manifest)


def results_table(rows: dict[str, dict]) -> str:
    """Paper-style markdown table (x100), one row per model / engine, plus a by-modality one."""
    from univl_fast.evaluation.embeddings import format_table

    main = format_table(rows, keys=TABLE_KEYS, name="model (multi-modal corpus)")
    mod_rows = {}
    for label, m in rows.items():
        if "text" in m and "image" in m:
            mod_rows[label] = {
                "Text MRR@10": m["text"]["MRR@10"],
                "Image MRR@10": m["image"]["MRR@10"],
                "Multi MRR@10": m["MRR@10"],
            }
    if not mod_rows:
        return main
    by_mod = format_table(
        mod_rows,
        keys=("Text MRR@10", "Image MRR@10", "Multi MRR@10"),
        name="model (paper's settings)",
    )
    return main + "\n\n" + by_mod


def format_example(ex: dict) -> str:
    found = (
        f"positive found at rank {ex['positive_rank']}"
        if ex["positive_rank"]
        else "positive not in the top 100"
    )
    lines = [f"query ({ex['answerable_by']}-answerable): {ex['query']}  -- {found}"]
    for h in ex["top"]:
        mark = "*" if h["positive"] else " "
        text = " ".join(h["text"].split())
        text = text if len(text) <= 80 else text[:77] + "..."
        lines.append(
            f" {mark}{h['rank']:2d}. {h['score']:+.3f} {h['modality']:<5} {h['doc_id']}  {text}"
        )
    return "\n".join(lines)


def _cli(argv: list[str], what: str) -> None:
    """Run one ``univl-fast`` sub-command in this process; a non-zero exit stops the demo."""
    from univl_fast.cli import main

    rc = main(argv)
    if rc != 0:
        raise SystemExit(
            f"univl-fast demo: the {what} stage failed (exit {rc}): univl-fast {' '.join(argv)}"
        )


def run(args: argparse.Namespace) -> int:
    return Demo(args).run()
