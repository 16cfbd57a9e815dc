"""Training-step speed for univl-tiny on the synthetic benchmark (issue 3), baselines in the
same run.

Table form (rounds interleaved so machine load hits every variant alike)::

    .venv/bin/python bench/bench_train.py --rounds 5 --threads 1

pytest-benchmark form::

    .venv/bin/python -m pytest bench/bench_train.py -q -p no:cacheprovider \
        --benchmark-columns=min,median,mean,rounds --benchmark-group-by=group

One step = forward + backward + AdamW on a stage-1 batch of 64 queries and their 64 positives
(about half image docs). Variants:
  * ``baseline``: open_clip's ``encode_text`` (every text padded to 77 tokens), fp32;
  * ``trimmed``: our text tower trimmed to the batch's longest sequence (exact: causal
    attention, EOT pooling), fp32 -- what training uses;
  * ``trimmed+bf16``: the same under ``torch.autocast("cpu", bfloat16)`` (weights fp32).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _setup(data_dir: Path | None = None):
    from univl_fast.data.layout import DatasetDir
    from univl_fast.data.synth import generate
    from univl_fast.model import UniVLDR
    from univl_fast.train.batches import Corpus, InputCounts, assemble, build_examples
    from univl_fast.train.config import default_config

    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="bench_train_")) / "small"
        generate(data_dir, scale="small", seed=0, progress=False)
    ds = DatasetDir(data_dir)
    model = UniVLDR.from_config("univl-tiny", seed=0)
    counts = InputCounts()
    corpus = Corpus(ds, "plain", model.preprocess, model.config.image_size, counts)
    examples = build_examples(ds.queries("train"), corpus, counts)
    cfg = default_config("inbatch", "univl-tiny")
    batch = assemble(
        examples[:64], "inbatch", cfg, random.Random(0), corpus, model.tokenize, counts
    )
    return model, batch


def make_step(model, batch, variant: str):
    from univl_fast.train.loop import param_groups
    from univl_fast.train.losses import batch_loss

    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-5)
    trim = model._can_trim_text

    def step() -> float:
        model.train()
        model._can_trim_text = variant != "baseline" and trim
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.endswith("bf16")):
                loss = batch_loss(model, batch, "inbatch", False)
            opt.zero_grad(set_to_none=True)
            loss.float().backward()
            opt.step()
        finally:
            model._can_trim_text = trim
        return float(loss.detach())

    return step


VARIANTS = ("baseline", "trimmed", "trimmed+bf16")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", type=Path, help="an existing small synthetic dataset dir")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, batch = _setup(args.data)
    steps = {v: make_step(model, batch, v) for v in VARIANTS}
    for fn in steps.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for v, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[v].append(time.perf_counter() - t)
    base = statistics.median(times["baseline"])
    print(
        f"univl-tiny training step, batch 64 (stage 1), {args.threads} torch thread(s), "
        f"{args.rounds} interleaved rounds"
    )
    print("| variant | median s/step | min s/step | speed-up vs baseline (median) |")
    print("|---|---|---|---|")
    for v in VARIANTS:
        med = statistics.median(times[v])
        print(f"| {v} | {med:.3f} | {min(times[v]):.3f} | {base / med:.2f}x |")
    return 0


# ---- pytest-benchmark form
try:
    import pytest

    @pytest.fixture(scope="module")
    def _model_batch():
        torch.set_num_threads(1)
        return _setup()

    @pytest.mark.parametrize("variant", VARIANTS)
    def test_train_step(benchmark, _model_batch, variant):
        benchmark.group = "univl-tiny train step (batch 64)"
        model, batch = _model_batch
        benchmark.pedantic(make_step(model, batch, variant), rounds=5, warmup_rounds=1)
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    sys.exit(main())
