"""The PyTorch UniVL-DR model (torch world): open_clip towers, configs, checkpoint loading."""

from __future__ import annotations

from univl_fast.model.checkpoint import CheckpointError
from univl_fast.model.config import ModelConfig
from univl_fast.model.univl import UniVLDR

__all__ = ["UniVLDR", "ModelConfig", "CheckpointError"]
