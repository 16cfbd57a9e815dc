"""Model configuration: which open_clip architecture a checkpoint holds, and how its inputs
are prepared. Saved as ``model_config.json`` beside every checkpoint and read by the exporter
and the runtime, so an artifact says exactly how to feed it."""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"
BUILTIN_CONFIGS = ("univl-tiny",)

# The paper (and its code) start the learnable logit scale at 100 (temperature 0.01).
PAPER_LOGIT_SCALE = 100.0
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model and prepare its inputs (JSON-able)."""

    # open_clip model name this config came from (or "custom" for a user JSON config)
    model_name: str
    # the full open_clip model config dict (embed_dim, vision_cfg, text_cfg, quick_gelu, ...)
    open_clip_cfg: dict[str, Any]
    # output embedding width of both towers (Eq. 1-3 vectors have this many dims)
    embed_dim: int
    # square input size of the image tower, in pixels
    image_size: int
    # per-channel normalization applied after scaling pixels to [0, 1]
    mean: list[float] = field(default_factory=lambda: list(OPENAI_MEAN))
    std: list[float] = field(default_factory=lambda: list(OPENAI_STD))
    # preprocessing: resize shorter side with this interpolation, then center-crop
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    # text: CLIP BPE tokens, padded/truncated to this length (EOT last when truncated)
    context_length: int = 77
    vocab_size: int = 49408
    tokenizer: str = "clip-bpe"
    # text pooling: "argmax" = features at the end-of-text token (highest id), as in CLIP
    text_pool_type: str = "argmax"
    # activation of both towers: QuickGELU (OpenAI CLIP) or GELU
    quick_gelu: bool = False
    # how image docs combine (paper Eq. 3): image + caption embeddings, summed raw, then L2
    image_doc_combine: str = "sum_then_normalize"
    format_version: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"model_config.json: unknown fields {unknown}")
        missing = [
            k for k in ("model_name", "open_clip_cfg", "embed_dim", "image_size") if k not in obj
        ]
        if missing:
            raise ValueError(f"model_config.json: missing fields {missing}")
        return cls(**obj)

    @classmethod
    def from_open_clip_cfg(cls, model_name: str, cfg: dict[str, Any]) -> ModelConfig:
        """Derive the config from an open_clip model config dict (the dict is deep-copied)."""
        cfg = copy.deepcopy(cfg)
        for key in ("embed_dim", "vision_cfg", "text_cfg"):
            if key not in cfg:
                raise ValueError(f"open_clip config for {model_name!r} has no {key!r}")
        vision = cfg["vision_cfg"]
        text = cfg["text_cfg"]
        if vision.get("timm_model_name") or text.get("hf_model_name") or cfg.get("custom_text"):
            raise ValueError(
                f"model {model_name!r}: timm / Hugging Face / custom-text towers are not supported "
                "(univl_fast needs open_clip's own ViT and text transformer)"
            )
        size = vision.get("image_size", 224)
        if isinstance(size, (list, tuple)):
            if size[0] != size[1]:
                raise ValueError(f"model {model_name!r}: non-square image_size {size} unsupported")
            size = size[0]
        pre = cfg.get("preprocess_cfg", {})
        return cls(
            model_name=model_name,
            open_clip_cfg=cfg,
            embed_dim=int(cfg["embed_dim"]),
            image_size=int(size),
            mean=list(pre.get("mean", OPENAI_MEAN)),
            std=list(pre.get("std", OPENAI_STD)),
            interpolation=pre.get("interpolation", "bicubic"),
            resize_mode=pre.get("resize_mode", "shortest"),
            context_length=int(text.get("context_length", 77)),
            vocab_size=int(text.get("vocab_size", 49408)),
            text_pool_type=text.get("pool_type", "argmax"),
            quick_gelu=bool(cfg.get("quick_gelu", False)),
        )


def builtin_config_path(name: str) -> Path:
    return CONFIG_DIR / f"{name}.json"


def register_builtin_configs() -> None:
    """Make our configs (``univl-tiny``) visible to open_clip's registry too."""
    import open_clip

    if "univl-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def resolve_open_clip_cfg(
    model_name_or_cfg: str | os.PathLike | dict[str, Any],
) -> tuple[str, dict]:
    """Return ``(model_name, open_clip cfg dict)`` for a built-in name, an open_clip model name,
    a path to a JSON config in open_clip's format, or a config dict."""
    if isinstance(model_name_or_cfg, dict):
        return "custom", copy.deepcopy(model_name_or_cfg)
    name = str(model_name_or_cfg)
    if name in BUILTIN_CONFIGS:
        with open(builtin_config_path(name), encoding="utf-8") as fh:
            return name, json.load(fh)
    if name.endswith(".json") or os.path.sep in name:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"model config {path}: file not found")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"model config {path}: not valid JSON ({exc})") from None
        cfg = cfg.get("model_cfg", cfg)  # open_clip_config.json wraps it in model_cfg
        return path.stem, cfg
    import open_clip

    register_builtin_configs()
    cfg = open_clip.get_model_config(name.replace("/", "-"))
    if cfg is None:
        raise ValueError(
            f"unknown model {name!r}: not a built-in ({', '.join(BUILTIN_CONFIGS)}), not an open_clip "
            "model name (open_clip.list_models()) and not a JSON config path"
        )
    return name.replace("/", "-"), cfg


def paper_logit_scale() -> float:
    """log(100): the paper's starting logit scale (tau = 0.01)."""
    return math.log(PAPER_LOGIT_SCALE)
