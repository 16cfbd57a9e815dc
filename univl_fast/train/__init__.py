"""Training (torch world): both UniVL-DR stages, negative mining and checkpoint evaluation.

Python API (no argparse needed)::

    from univl_fast.train import train_stage, mine_negatives, evaluate_checkpoint
    stage1 = train_stage(data, "ck/stage1", stage="inbatch")
    mine_negatives(data, stage1, out_dir=data)          # writes train_all.json / dev_all.json
    stage2 = train_stage(data, "ck/stage2", stage="hardneg", init=stage1)
    metrics = evaluate_checkpoint(stage2, data, split="test", by_modality=True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from univl_fast.train.evaluate import evaluate_checkpoint
    from univl_fast.train.loop import train_stage
    from univl_fast.train.mine import mine_negatives

__all__ = ["train_stage", "mine_negatives", "evaluate_checkpoint"]


def __getattr__(name: str):
    if name == "train_stage":
        from univl_fast.train.loop import train_stage

        return train_stage
    if name == "mine_negatives":
        from univl_fast.train.mine import mine_negatives

        return mine_negatives
    if name == "evaluate_checkpoint":
        from univl_fast.train.evaluate import evaluate_checkpoint

        return evaluate_checkpoint
    raise AttributeError(name)
