"""The training loop shared by both stages: AdamW, warmup + cosine schedule, dev MRR@10 checks
with early stopping, best checkpoint kept, resumable training state, seeded and deterministic
on CPU.

Determinism: the batch order of epoch e is a shuffle seeded by (seed, e), and the positive /
negative draws of step s by (seed, e, s); nothing else is random (CLIP has no dropout). So a run
resumed from its saved state takes exactly the same steps as an uninterrupted one.

Files in ``out_dir``: the best checkpoint (``model.safetensors``, ``model_config.json``,
``train_config.json``, ``metrics.json``) and ``train_state.pt`` (model, optimizer, scheduler,
step, RNG, dev history: what ``--resume`` continues from; weights-only torch format).
"""

from __future__ import annotations

import io
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from univl_fast.data.layout import DatasetDir, Query
from univl_fast.model import UniVLDR
from univl_fast.model.univl import CONFIG_NAME, TRAIN_CONFIG_NAME
from univl_fast.train.batches import (
    Corpus,
    Example,
    InputCounts,
    assemble,
    build_examples,
    load_training_queries,
)
from univl_fast.train.config import TrainConfig, default_config
from univl_fast.train.losses import batch_loss
from univl_fast.utils.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

STATE_NAME = "train_state.pt"


def param_groups(model: UniVLDR, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, 1-D params or logit_scale."""
    decay, no_decay = [], []
    for name, p in model.clip.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.split(".")[-1]
        if (
            p.ndim < 2
            or "bias" in leaf
            or "logit_scale" in name
            or ".ln_" in f".{name}"
            or "ln_final" in name
            or leaf.startswith("ln")
        ):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_lambda(cfg: TrainConfig, total_steps: int):
    warm = max(0, cfg.warmup_steps)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))

    return f


def evaluate_dev(
    model: UniVLDR,
    ds: DatasetDir,
    queries: list[Query],
    qrels: dict,
    captions: str,
    batch_size: int = 128,
) -> dict:
    """Dev metrics (design.md keys) of the current weights: encode corpus + queries, exact
    search over the joint corpus."""
    from univl_fast.evaluation.embeddings import evaluate_embeddings
    from univl_fast.train.encode import encode_corpus, encode_queries

    corpus = encode_corpus(model, ds, captions, batch_size=batch_size, progress=False)
    qv = encode_queries(model, queries, batch_size=batch_size, progress=False)
    return evaluate_embeddings(
        qv, [q.qid for q in queries], corpus.vectors, corpus.ids, corpus.modalities, qrels, k=100
    )


def _dev_set(ds: DatasetDir, cfg: TrainConfig) -> tuple[list[Query], dict] | None:
    if not ds.has("dev.json"):
        log.info("no dev.json: no dev checks, the last weights are kept")
        return None
    queries = ds.queries("dev")
    qrels = ds.qrels("dev")
    if cfg.dev_max_queries:
        queries = queries[: cfg.dev_max_queries]
    keep = {q.qid for q in queries}
    qrels = {q: r for q, r in qrels.items() if q in keep}
    queries = [q for q in queries if q.qid in qrels]
    return (queries, qrels) if queries else None


def _save_state(path: Path, model: UniVLDR, opt, sched, step: int, extra: dict) -> None:
    buf = io.BytesIO()
    torch.save(
        {
            "model": {k: v.detach().clone() for k, v in model.clip.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "torch_rng": torch.get_rng_state(),
            **extra,
        },
        buf,
    )
    atomic_write_bytes(path, buf.getvalue())


def _load_state(path: Path) -> dict:
    from univl_fast.model.checkpoint import CheckpointError

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - name the file whatever went wrong
        raise CheckpointError(
            f"{path}: cannot read training state ({exc}); delete it to restart"
        ) from None


def train_stage(
    data_dir: str | Path,
    out_dir: str | Path,
    stage: str = "inbatch",
    init: str | Path | None = None,
    model_name: str | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    **overrides: Any,
) -> Path:
    """Train one stage and return ``out_dir`` (the best checkpoint by dev MRR@10).

    stage: "inbatch" (CLIP-DPR) or "hardneg" (UniVL-DR, needs ``init`` and mined negatives).
    init: checkpoint to start from (our dir, or a CLIP weight file with ``model_name``); without
    it a random ``model_name`` (default ``univl-tiny``) seeded by ``seed``.
    overrides: any :class:`TrainConfig` field (lr, epochs, negatives, k, inbatch, captions,
    mined_dir, batch_size, eval_every, ...). ``resume``: continue from ``out_dir/train_state.pt``.
    ``stop_after``: pause after this many total steps (the state is saved; resume later).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed = int(overrides.get("seed") or 0)
    if init:
        model = UniVLDR.from_pretrained(init, model_name)
    else:
        model = UniVLDR.from_config(model_name or "univl-tiny", seed=seed)
    cfg = default_config(
        stage,
        model.config.model_name,
        init=str(init) if init else None,
        model_name=model.config.model_name,
        **overrides,
    )
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)

    ds = DatasetDir(data_dir)
    counts = InputCounts()
    corpus = Corpus(ds, cfg.captions, model.preprocess, model.config.image_size, counts)
    examples = build_examples(load_training_queries(ds, stage, cfg.mined_dir), corpus, counts)
    if len(examples) < 2:
        raise ValueError(f"{ds.path}: only {len(examples)} usable training queries; need >= 2")
    dev = _dev_set(ds, cfg)

    bs = min(cfg.batch_size, len(examples))
    steps_per_epoch = len(examples) // bs
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    eval_every = cfg.eval_every if cfg.eval_every > 0 else steps_per_epoch  # 0: once per epoch
    opt = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))

    state_path = out / STATE_NAME
    step, best, bad_evals, history, elapsed = 0, -1.0, 0, [], 0.0
    if resume and state_path.is_file():
        st = _load_state(state_path)
        saved_cfg = st.get("config", {})
        for key in ("stage", "seed", "batch_size", "lr", "epochs", "negatives", "k", "inbatch"):
            if key in saved_cfg and saved_cfg[key] != getattr(cfg, key):
                raise ValueError(
                    f"{state_path}: saved with {key}={saved_cfg[key]!r}, now {getattr(cfg, key)!r}; "
                    "resume with the same options (or start a new --out)"
                )
        model.clip.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["torch_rng"])
        step, best, bad_evals = int(st["step"]), float(st["best"]), int(st["bad_evals"])
        history, elapsed = list(st["history"]), float(st.get("elapsed", 0.0))
        log.info("resuming %s at step %d/%d (best dev MRR@10 %.4f)", out, step, total, best)
        if st.get("done"):
            log.info("%s: training already finished; nothing to do", out)
            return out
    elif resume:
        log.info("--resume but no %s; starting fresh", state_path)

    def extra_state(done: bool) -> dict:
        return {
            "best": best,
            "bad_evals": bad_evals,
            "history": history,
            "config": cfg.to_json(),
            "elapsed": elapsed + (time.perf_counter() - t0),
            "done": done,
        }

    def save_best(metrics: dict) -> None:
        cfg.notes = {"inputs": counts.to_json(), "steps": step, "steps_per_epoch": steps_per_epoch}
        model.save_pretrained(out, train_config=cfg.to_json(), metrics=metrics)

    def check_dev() -> bool:
        """Dev check; returns True when early stopping triggers."""
        nonlocal best, bad_evals
        t = time.perf_counter()
        metrics = evaluate_dev(model, ds, dev[0], dev[1], cfg.captions)
        mrr = float(metrics["MRR@10"])
        history.append(
            {
                "step": step,
                "MRR@10": mrr,
                "image_share@10": metrics["image_share@10"],
                "eval_s": round(time.perf_counter() - t, 2),
            }
        )
        msg = f"step {step}: dev MRR@10 {mrr:.4f} (best {max(best, 0):.4f})"
        if mrr > best:
            best, bad_evals = mrr, 0
            save_best({"split": "dev", "step": step, **metrics, "history": history})
            msg += " saved"
        else:
            bad_evals += 1
        tqdm.write(msg, file=sys.stderr)
        return bad_evals >= cfg.patience

    t0 = time.perf_counter()
    model.train()
    stopped_early = False
    bar = tqdm(
        total=total,
        initial=step,
        desc=f"train {stage}",
        unit="step",
        file=sys.stderr,
        disable=not progress,
    )
    perm_epoch, perm = -1, []
    ema = None
    while step < total:
        if stop_after is not None and step >= stop_after:
            _save_state(state_path, model, opt, sched, step, extra_state(False))
            bar.close()
            return out
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm = list(range(len(examples)))
            random.Random(f"{cfg.seed}/epoch/{epoch}").shuffle(perm)
            perm_epoch = epoch
        rng = random.Random(f"{cfg.seed}/step/{epoch}/{pos}")
        chunk: list[Example] = [examples[i] for i in perm[pos * bs : (pos + 1) * bs]]
        batch = assemble(chunk, stage, cfg, rng, corpus, model.tokenize, counts)
        if batch is not None:
            model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.amp_bf16):
                loss = batch_loss(model, batch, stage, cfg.inbatch)
            opt.zero_grad(set_to_none=True)
            loss.float().backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(cfg.clamp_logit_scale))
            lv = float(loss.detach())
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
        sched.step()
        step += 1
        bar.update(1)
        bar.set_postfix(
            loss=f"{ema:.3f}" if ema is not None else "-",
            epoch=epoch,
            scale=f"{model.logit_scale.exp().item():.0f}",
        )
        if dev and (step % eval_every == 0 or step == total):
            if check_dev():
                stopped_early = True
                tqdm.write(
                    f"early stop at step {step}: {cfg.patience} dev checks without gain",
                    file=sys.stderr,
                )
                break
        if step % cfg.save_every == 0 and step < total:
            _save_state(state_path, model, opt, sched, step, extra_state(False))
    bar.close()
    if not dev:
        save_best({"split": None, "step": step})
    elif not (out / CONFIG_NAME).is_file():  # no dev check ran (e.g. 0 steps)
        check_dev()
    # record the final counts / timing in the best checkpoint's train config
    cfg.notes = {
        "inputs": counts.to_json(),
        "steps_run": step,
        "steps_per_epoch": steps_per_epoch,
        "stopped_early": stopped_early,
        "best_dev_mrr10": best,
        "train_seconds": round(elapsed + time.perf_counter() - t0, 1),
        "history": history,
    }
    atomic_write_json(out / TRAIN_CONFIG_NAME, cfg.to_json())
    _save_state(state_path, model, opt, sched, step, extra_state(True))
    _report_counts(counts)
    return out


def _report_counts(c: InputCounts) -> None:
    lines = []
    if c.queries_without_positives_in_corpus:
        lines.append(
            f"{c.queries_without_positives_in_corpus} queries skipped (positives not in corpus)"
        )
    if c.undecodable_images:
        lines.append(f"{c.undecodable_images} undecodable images skipped")
    if c.examples_dropped_undecodable_positive:
        lines.append(
            f"{c.examples_dropped_undecodable_positive} examples dropped (undecodable positive)"
        )
    if c.empty_captions:
        lines.append(f"{c.empty_captions} image docs with an empty caption (encoded as empty text)")
    if c.negatives_filled_from_other_modality or c.negatives_filled_at_random:
        lines.append(
            f"negatives filled: {c.negatives_filled_from_other_modality} from the other "
            f"modality, {c.negatives_filled_at_random} at random"
        )
    for line in lines:
        log.info("%s", line)


__all__ = ["train_stage", "evaluate_dev", "param_groups"]
