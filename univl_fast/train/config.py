"""Training configuration (saved as ``train_config.json`` beside every checkpoint).

Defaults follow the paper's code (AdamW lr 5e-6, betas (0.9, 0.98), eps 1e-6, weight decay 0.2
except biases / norms / 1-D params / logit_scale, cosine decay, no warmup, batch 64, up to 20
epochs, dev check every 500 steps, early stop after 5 checks without gain). Those are the
values for fine-tuning a pretrained CLIP (ViT-B-32).

``univl-tiny`` trains from scratch on the synthetic benchmark, where lr 5e-6 would not move a
random network in minutes: its defaults (:data:`TINY_OVERRIDES`) use a higher learning rate
with a short linear warmup, fewer epochs and more frequent dev checks. Any field can be
overridden on the command line.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

STAGES = ("inbatch", "hardneg")
NEGATIVE_MODES = ("balanced", "texts", "images", "random")


@dataclass
class TrainConfig:
    # which stage: "inbatch" (CLIP-DPR, stage 1) or "hardneg" (UniVL-DR, stage 2)
    stage: str = "inbatch"
    # model to start from: a checkpoint (dir, or weight file + model_name) or a config name for
    # random init (init=None and model_name set)
    init: str | None = None
    model_name: str | None = None
    # --- data
    captions: str = "plain"  # plain | query | exp | path (Table 4)
    mined_dir: str | None = None  # where train_all.json / dev_all.json are (default: data dir)
    # --- stage 2 negatives
    negatives: str = "balanced"  # balanced | texts | images | random (Table 3)
    k: int = 1  # balanced: k image + k text negatives; the other modes: 2k negatives
    inbatch: bool = False  # stage 2: also use the other queries' positives and negatives
    neg_depth: int = 100  # sample hard negatives among the top neg_depth mined ones
    # --- optimisation (reference values)
    lr: float = 5e-6
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.2
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant
    batch_size: int = 64
    epochs: int = 20
    max_steps: int | None = None  # stop after this many optimizer steps (None: epochs decide)
    grad_clip: float | None = None
    clamp_logit_scale: float = 100.0  # CLIP keeps exp(logit_scale) <= 100
    amp_bf16: bool = False  # autocast bf16 on CPU (weights stay fp32)
    # --- evaluation, checkpoints
    eval_every: int = 500  # dev MRR@10 every N steps (and at the end); 0: once per epoch
    patience: int = 5  # early stop after this many dev checks without gain
    dev_max_queries: int | None = None  # evaluate on at most this many dev queries
    save_every: int = 100  # training state (for --resume) every N steps
    # --- reproducibility
    seed: int = 0
    torch_threads: int | None = None
    # filled in at run time: counts of skipped inputs etc.
    notes: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.negatives not in NEGATIVE_MODES:
            raise ValueError(f"negatives must be one of {NEGATIVE_MODES}, got {self.negatives!r}")
        if self.stage == "hardneg" and not self.init:
            raise ValueError("stage hardneg starts from a stage-1 checkpoint: give init (--init)")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant, got {self.schedule!r}")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrainConfig:
        obj = dict(obj)
        if "betas" in obj:
            obj["betas"] = tuple(obj["betas"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in obj.items() if k in known})


# From-scratch defaults for the built-in benchmark model (see module docstring and
# bench/results/train.md for how they were chosen).
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "inbatch": {
        "lr": 1e-3,
        "warmup_steps": 30,
        "epochs": 8,  # synth v2: the from-scratch image tower needs ~8 epochs to read colours
        "eval_every": 0,  # once per epoch
        "patience": 3,
        "save_every": 50,
    },
    "hardneg": {
        "lr": 1e-4,
        "warmup_steps": 5,
        "epochs": 1,
        "eval_every": 28,
        "patience": 2,
        "save_every": 50,
    },
}


def default_config(stage: str, base_model: str | None, **overrides: Any) -> TrainConfig:
    """The reference config, with the tiny model's defaults where the model is univl-tiny;
    explicit ``overrides`` (non-None values) win."""
    cfg = TrainConfig(stage=stage)
    if base_model == "univl-tiny":
        for k, v in TINY_OVERRIDES.get(stage, {}).items():
            setattr(cfg, k, v)
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in TrainConfig.__dataclass_fields__:
            raise TypeError(f"unknown training option {k!r}")
        if isinstance(v, os.PathLike):
            v = os.fspath(v)
        setattr(cfg, k, tuple(v) if k == "betas" else v)
    cfg.stage = stage
    cfg.validate()
    return cfg
