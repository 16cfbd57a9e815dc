"""The paper's Figure 4: the embedding space of queries, text docs and image docs, per model.

``sample_items`` picks ``n`` test queries, ``n`` text docs and ``n`` image docs with a fixed
seed (the same items for every model); ``embed_items`` encodes them with one checkpoint;
``project_2d`` runs scikit-learn's t-SNE (``sklearn.manifold.TSNE``, cosine metric, PCA
init, fixed random state) on one model's 3n vectors; ``draw_panels`` draws one panel per
model (queries, texts, images marked distinctly; queries answered by an image hollow) with
matplotlib's Agg backend.

Needs the ``[report]`` extra (matplotlib, scikit-learn) and, to encode, the ``[train]`` extra
(torch); both are imported only inside the functions that use them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from univl_fast.errors import UnivlFastError

log = logging.getLogger(__name__)

KINDS = ("query", "text", "image")
# marker, colour, legend label per kind (colour-blind safe pair + grey for queries)
STYLE = {
    "query": ("*", "#222222", "query"),
    "text": ("o", "#0072B2", "text doc"),
    "image": ("^", "#E69F00", "image doc"),
}


class PlotInputError(UnivlFastError, ValueError):
    """A plot input that cannot be used (too few items, label count mismatch, ...)."""


@dataclass(frozen=True)
class Sample:
    """The items drawn in every panel: query ids and texts, text doc ids and texts, image doc
    ids (captions are read per model, with the model's caption file)."""

    qids: list[str]
    query_texts: list[str]
    query_modality: list[str]
    text_ids: list[str]
    texts: list[str]
    image_ids: list[str]

    def kinds(self) -> np.ndarray:
        return np.array(
            ["query"] * len(self.qids)
            + ["text"] * len(self.text_ids)
            + ["image"] * len(self.image_ids)
        )


def sample_items(data: str | Path, n: int = 30, seed: int = 0, split: str = "test") -> Sample:
    """``n`` queries of ``split`` (with qrels), ``n`` text docs and ``n`` image docs, drawn
    uniformly without replacement with ``numpy.random.default_rng(seed)``."""
    from univl_fast.data.layout import DatasetDir

    if n < 2:
        raise PlotInputError(f"plot: need at least 2 items of each kind, got n={n}")
    ds = DatasetDir(data)
    qrels = ds.qrels(split)
    queries = [q for q in ds.queries(split) if q.qid in qrels]
    text_docs = ds.text_docs()
    image_ids = ds.image_ids()
    for what, have in (
        ("test queries", len(queries)),
        ("text docs", len(text_docs)),
        ("image docs", len(image_ids)),
    ):
        if have < n:
            raise PlotInputError(f"plot: {data} has {have} {what}, fewer than n={n}")
    rng = np.random.default_rng(seed)
    qi = sorted(rng.choice(len(queries), n, replace=False).tolist())
    ti = sorted(rng.choice(len(text_docs), n, replace=False).tolist())
    ii = sorted(rng.choice(len(image_ids), n, replace=False).tolist())
    return Sample(
        qids=[queries[i].qid for i in qi],
        query_texts=[queries[i].text for i in qi],
        query_modality=[queries[i].modality or "unknown" for i in qi],
        text_ids=[text_docs[i].doc_id for i in ti],
        texts=[text_docs[i].text for i in ti],
        image_ids=[image_ids[i] for i in ii],
    )


def strategy_title(checkpoint: str | Path) -> str:
    """A panel title from the checkpoint's ``train_config.json``: the training strategy."""
    path = Path(checkpoint) / "train_config.json"
    if not path.is_file():
        return Path(checkpoint).name
    cfg = json.loads(path.read_text(encoding="utf-8"))
    captions = cfg.get("captions", "plain")
    suffix = "" if captions == "plain" else f" ({captions} captions)"
    if cfg.get("stage") == "inbatch":
        return f"In-batch (CLIP-DPR){suffix}"
    neg = cfg.get("negatives", "?")
    names = {
        "texts": "Only texts",
        "images": "Only images",
        "balanced": "Balanced (UniVL-DR)",
        "random": "Random (ANCE)",
    }
    inb = " + in-batch" if cfg.get("inbatch") else ""
    return f"{names.get(neg, neg)}{inb}{suffix}"


def checkpoint_captions(checkpoint: str | Path) -> str:
    """The caption file a checkpoint was trained with (``plain`` when unknown)."""
    path = Path(checkpoint) / "train_config.json"
    if not path.is_file():
        return "plain"
    return str(json.loads(path.read_text(encoding="utf-8")).get("captions", "plain"))


def embed_items(
    checkpoint: str | Path, data: str | Path, sample: Sample, captions: str | None = None
) -> np.ndarray:
    """(3n, d) float32 unit rows: the sample's queries, text docs, image docs, in that order,
    encoded by ``checkpoint`` (image docs with ``captions``, default the checkpoint's)."""
    from univl_fast.data.layout import DatasetDir
    from univl_fast.model import UniVLDR

    model = UniVLDR.from_pretrained(checkpoint)
    ds = DatasetDir(data)
    caps = captions or checkpoint_captions(checkpoint)
    caption_of = {d.doc_id: d.caption for d in ds.image_docs(caps)}
    images: dict[str, object] = {}
    for ids, pics in ds.iter_images(sample.image_ids, batch_size=len(sample.image_ids)):
        images.update(zip(ids, pics, strict=True))
    missing = [i for i in sample.image_ids if i not in images]
    if missing:
        raise PlotInputError(f"plot: images {missing[:3]} could not be decoded from {data}")
    q = model.encode_queries(sample.query_texts)
    t = model.encode_text_docs(sample.texts)
    im = model.encode_image_docs(
        [images[i] for i in sample.image_ids], [caption_of.get(i, "") for i in sample.image_ids]
    )
    return np.concatenate([q, t, im]).astype(np.float32)


def project_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """scikit-learn t-SNE of ``vectors`` (n, d) to (n, 2): exact gradient (n is ~90), cosine
    metric, PCA init, perplexity min(30, (n - 1) / 3), ``random_state=seed``. Runs on one
    thread: on a busy machine OpenMP's thread pool made 90 points take ~40 s instead of ~1 s."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 4:
        raise PlotInputError(f"plot: t-SNE needs a (n >= 4, d) array, got shape {x.shape}")
    perplexity = min(30.0, (x.shape[0] - 1) / 3.0)
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        metric="cosine",
        init="pca",
        method="exact",
        random_state=seed,
    )
    with threadpool_limits(1):
        return tsne.fit_transform(x).astype(np.float32)


def draw_panels(
    points: Sequence[np.ndarray],
    kinds: np.ndarray,
    titles: Sequence[str],
    out: str | Path,
    dpi: int = 110,
    query_answer: Sequence[str] | None = None,
) -> Path:
    """One scatter panel per model (``points[i]``: (3n, 2)), saved as PNG to ``out``.

    ``query_answer``: the answer modality of each query (in the order of the query points);
    given, queries answered by an image are drawn as hollow stars edged in the image colour,
    the others as filled stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(points) != len(titles):
        raise PlotInputError(f"plot: {len(points)} panels but {len(titles)} titles")
    n = len(points)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows + 0.5), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    groups = []  # (mask, scatter style)
    for kind in KINDS:
        marker, colour, label = STYLE[kind]
        sel = kinds == kind
        style = {"marker": marker, "c": colour, "s": 26, "label": label, "linewidths": 0}
        if kind != "query":
            groups.append((sel, style))
            continue
        style["s"] = 50
        if query_answer is None:
            groups.append((sel, style))
            continue
        answer = np.asarray(query_answer)
        if answer.size != sel.sum():
            raise PlotInputError(f"plot: {answer.size} query answers for {sel.sum()} queries")
        by_image = np.zeros_like(sel)
        by_image[np.flatnonzero(sel)] = answer == "image"
        hollow = {
            "marker": marker,
            "facecolors": "none",
            "edgecolors": STYLE["image"][1],
            "s": 50,
            "linewidths": 1.1,
            "label": "query (answer: image)",
        }
        groups.append((sel & ~by_image, {**style, "label": "query (answer: text)"}))
        groups.append((by_image, hollow))
    for ax, pts, title in zip(axes.ravel(), points, titles, strict=False):
        for sel, style in groups:
            ax.scatter(pts[sel, 0], pts[sel, 1], alpha=0.85, **style)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(groups), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def plot_embeddings(
    checkpoints: Sequence[str | Path],
    data: str | Path,
    out: str | Path,
    labels: Sequence[str] | None = None,
    n: int = 30,
    seed: int = 0,
) -> dict:
    """Figure 4 for ``checkpoints``: writes ``out`` (PNG) and ``out`` with ``.json`` (the
    sampled ids, titles and 2-D points). Returns that JSON dict."""
    if not checkpoints:
        raise PlotInputError("plot: give at least one --checkpoint")
    if labels and len(labels) != len(checkpoints):
        raise PlotInputError(
            f"plot: {len(labels)} --label for {len(checkpoints)} --checkpoint (give one per checkpoint or none)"
        )
    for ck in checkpoints:
        if not Path(ck).is_dir():
            raise PlotInputError(f"plot: checkpoint {ck} is not a directory")
    sample = sample_items(data, n=n, seed=seed)
    titles = list(labels) if labels else [strategy_title(c) for c in checkpoints]
    points = []
    for ck, title in zip(checkpoints, titles, strict=True):
        log.info("plot: encoding %d items with %s (%s)", 3 * n, ck, title)
        points.append(project_2d(embed_items(ck, data, sample), seed=seed))
    kinds = sample.kinds()
    png = draw_panels(points, kinds, titles, out, query_answer=sample.query_modality)
    meta = {
        "figure": str(png),
        "projection": "sklearn.manifold.TSNE(metric='cosine', init='pca', method='exact')",
        "seed": seed,
        "n_per_kind": n,
        "panels": [
            {"checkpoint": str(c), "title": t, "points": p.round(4).tolist()}
            for c, t, p in zip(checkpoints, titles, points, strict=True)
        ],
        "kinds": kinds.tolist(),
        "ids": sample.qids + sample.text_ids + sample.image_ids,
        "query_modality": sample.query_modality,
    }
    png.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta
