"""UniVL-DR over open_clip: one CLIP model encodes queries, text docs and image docs into one
space (paper Sec. 4, Eq. 1-3).

- query, text doc: text tower, L2-normalized;
- image doc: image_tower(picture) + text_tower(caption), summed raw, then L2-normalized;
- score: cosine x exp(logit_scale) (CLIP's learnable scale; the paper starts it at 100).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from univl_fast.imageio import ImageSource, load_rgb
from univl_fast.model.checkpoint import (
    CheckpointError,
    check_compatible,
    normalize_state_dict,
    read_state_dict,
)
from univl_fast.model.config import ModelConfig, resolve_open_clip_cfg
from univl_fast.utils.io import atomic_write_bytes, atomic_write_json, read_json

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model_config.json"
TRAIN_CONFIG_NAME = "train_config.json"
METRICS_NAME = "metrics.json"


def _build_clip(cfg: dict[str, Any]) -> nn.Module:
    from open_clip.model import CLIP

    cfg = dict(cfg)
    cfg.pop("preprocess_cfg", None)
    cfg.pop("custom_text", None)
    return CLIP(**cfg)


def _jsonable(obj: Any) -> Any:
    if obj is None:
        return None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


_warned_no_core = False


def combine_image_docs_np(image_emb: np.ndarray, caption_emb: np.ndarray) -> np.ndarray:
    """Eq. 3 on numpy arrays through the fused compiled op: (n, d) x2 float32 -> (n, d) unit rows.

    Where the compiled core is not built, the torch world (training, mining, checkpoint eval)
    falls back to ops' numpy float64 reference with a warning, so research runs do not depend
    on a C++ build; the serving world has no such fallback.
    """
    global _warned_no_core
    from univl_fast import ops

    try:
        return ops.combine_image_docs(image_emb, caption_emb)
    except ImportError as exc:
        if not _warned_no_core:
            log.warning("%s -- using the numpy reference for Eq. 3", exc)
            _warned_no_core = True
        return ops.combine_image_docs_reference(image_emb, caption_emb).astype(np.float32)


class UniVLDR(nn.Module):
    """The paper's model: an open_clip CLIP plus the UniVL-DR encoding rules.

    ``clip`` is the open_clip ``CLIP`` module; ``config`` its :class:`ModelConfig`.
    """

    def __init__(self, clip: nn.Module, config: ModelConfig):
        super().__init__()
        self.clip = clip
        self.config = config
        self._tokenizer = None
        self._preprocess = None
        text_cfg = config.open_clip_cfg.get("text_cfg", {})
        # Trimming the padding is exact for CLIP's text tower: attention is causal and the
        # output is read at the end-of-text token, so tokens after it cannot change it.
        self._can_trim_text = (
            config.text_pool_type == "argmax"
            and not text_cfg.get("no_causal_mask", False)
            and not text_cfg.get("embed_cls", False)
            and hasattr(clip, "token_embedding")
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, model_name_or_cfg: str | os.PathLike | dict, seed: int = 0) -> UniVLDR:
        """Random init of a built-in config (``univl-tiny``), an open_clip model name, a JSON
        config path (open_clip format) or a config dict. Same seed -> same weights."""
        name, cfg = resolve_open_clip_cfg(model_name_or_cfg)
        config = ModelConfig.from_open_clip_cfg(name, cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip = _build_clip(config.open_clip_cfg)
        return cls(clip, config).eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, model_name: str | None = None) -> UniVLDR:
        """Load our checkpoint dir, or a local CLIP weight file with an open_clip model name
        (OpenAI state dict / JIT archive, open_clip checkpoint, the paper's released ones)."""
        path = Path(path)
        if path.is_dir() and (path / CONFIG_NAME).is_file():
            config = ModelConfig.from_json(read_json(path / CONFIG_NAME))
            if model_name and model_name.replace("/", "-") != config.model_name:
                log.warning(
                    "%s holds a %r checkpoint; ignoring --model %r",
                    path,
                    config.model_name,
                    model_name,
                )
            weights = path / WEIGHTS_NAME
            if not weights.is_file():
                raise CheckpointError(f"checkpoint {path}: {WEIGHTS_NAME} not found")
            name = config.model_name
        else:
            if not path.exists():
                raise CheckpointError(f"checkpoint {path}: file not found")
            if path.is_dir():
                raise CheckpointError(
                    f"checkpoint {path}: directory without {CONFIG_NAME} (not a univl_fast checkpoint)"
                )
            if not model_name:
                raise CheckpointError(
                    f"checkpoint {path} is a raw weight file: give the open_clip model name "
                    "(--model), e.g. ViT-B-32-quickgelu for OpenAI CLIP and the paper's checkpoints"
                )
            name, cfg = resolve_open_clip_cfg(model_name)
            config = ModelConfig.from_open_clip_cfg(name, cfg)
            weights = path
        with torch.random.fork_rng(devices=[]):
            clip = _build_clip(config.open_clip_cfg)
        expected = clip.state_dict()
        sd = normalize_state_dict(read_state_dict(weights), expected)
        check_compatible(sd, expected, name, weights)
        clip.load_state_dict(sd, strict=True)  # copies (and upcasts fp16) into fp32 params
        return cls(clip, config).eval()

    def save_pretrained(
        self,
        out_dir: str | os.PathLike,
        train_config: Any = None,
        metrics: dict | None = None,
    ) -> Path:
        """Write ``model.safetensors`` + ``model_config.json`` (+ train config, metrics) atomically."""
        from safetensors.torch import save

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.clip.state_dict().items()}
        meta = {"format": "pt", "model_name": self.config.model_name}
        atomic_write_bytes(out / WEIGHTS_NAME, save(tensors, metadata=meta))
        atomic_write_json(out / CONFIG_NAME, self.config.to_json())
        if train_config is not None:
            atomic_write_json(out / TRAIN_CONFIG_NAME, _jsonable(train_config))
        if metrics is not None:
            atomic_write_json(out / METRICS_NAME, metrics)
        return out

    # ------------------------------------------------------------------ inputs
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.config.context_length)
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP BPE -> LongTensor (n, context_length); truncated texts end with EOT."""
        texts = [t if isinstance(t, str) else "" for t in texts]
        return self.tokenizer(list(texts), context_length=self.config.context_length)

    @property
    def preprocess(self):
        """open_clip's eval transform: PIL RGB image -> float32 tensor (3, size, size)."""
        if self._preprocess is None:
            from open_clip.transform import image_transform

            c = self.config
            self._preprocess = image_transform(
                c.image_size,
                is_train=False,
                mean=tuple(c.mean),
                std=tuple(c.std),
                resize_mode=c.resize_mode,
                interpolation=c.interpolation,
            )
        return self._preprocess

    # ------------------------------------------------------------------ raw features (autograd)
    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalized) text tower output: LongTensor (n, L) -> float (n, embed_dim)."""
        clip = self.clip
        if not self._can_trim_text:
            return clip.encode_text(tokens)
        length = int(tokens.argmax(dim=-1).max().item()) + 1
        tokens = tokens[:, :length]
        cast_dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast_dtype)
        x = x + clip.positional_embedding[:length].to(cast_dtype)
        mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
        x = clip.transformer(x, attn_mask=mask)
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        proj = clip.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw image tower output: float (n, 3, size, size) -> float (n, embed_dim)."""
        return self.clip.encode_image(pixels)

    def query_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Eq. 1: unit query / text-doc vectors (n, d), with autograd."""
        return F.normalize(self.text_features(tokens), dim=-1)

    def image_doc_embeddings(
        self, pixels: torch.Tensor, caption_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 3 in torch (training): normalize(image_raw + caption_raw), (n, d)."""
        return F.normalize(self.image_features(pixels) + self.text_features(caption_tokens), dim=-1)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    # ------------------------------------------------------------------ numpy API (inference)
    def _device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @torch.no_grad()
    def _encode_text_raw(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            tok = self.tokenize(texts[start : start + batch_size]).to(self._device())
            out.append(self.text_features(tok).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.config.embed_dim), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def _load_pixels(self, images: Sequence[ImageSource], offset: int) -> torch.Tensor:
        tensors = []
        for i, img in enumerate(images):
            name = f"#{offset + i}" if not isinstance(img, (str, os.PathLike)) else str(img)
            tensors.append(self.preprocess(load_rgb(img, item=name)))
        return torch.stack(tensors)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Queries -> np.float32 (n, embed_dim) unit rows (Eq. 1)."""
        return self._eval_call(lambda: _l2(self._encode_text_raw(list(texts), batch_size)))

    def encode_text_docs(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Text documents -> np.float32 (n, embed_dim) unit rows (Eq. 2)."""
        return self._eval_call(lambda: _l2(self._encode_text_raw(list(texts), batch_size)))

    def encode_image_docs(
        self, images: Sequence[ImageSource], captions: Sequence[str], batch_size: int = 64
    ) -> np.ndarray:
        """Image documents (paths, bytes or PIL images, with their captions; an empty caption is
        encoded as empty text) -> np.float32 (n, embed_dim) unit rows (Eq. 3). An undecodable
        image raises ImageDecodeError naming it."""
        images, captions = list(images), list(captions)
        if len(images) != len(captions):
            raise ValueError(
                f"encode_image_docs: {len(images)} images but {len(captions)} captions"
            )

        def run() -> np.ndarray:
            parts = []
            with torch.no_grad():
                for start in range(0, len(images), batch_size):
                    px = self._load_pixels(images[start : start + batch_size], start)
                    parts.append(self.image_features(px.to(self._device())).float().cpu().numpy())
            img = (
                np.concatenate(parts).astype(np.float32, copy=False)
                if parts
                else np.zeros((0, self.config.embed_dim), np.float32)
            )
            cap = self._encode_text_raw(captions, batch_size)
            return self.combine(img, cap)

        return self._eval_call(run)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed images (n, 3, size, size) -> raw image embeddings np.float32 (n, d)."""
        return self._eval_call(
            lambda: self.image_features(pixels.to(self._device())).float().cpu().numpy()
        )

    @staticmethod
    def combine(image_emb: np.ndarray, caption_emb: np.ndarray) -> np.ndarray:
        """Eq. 3 on raw numpy embeddings (n, d) float32 -> unit rows (n, d) float32."""
        if image_emb.shape[0] == 0:
            return image_emb.astype(np.float32)
        return combine_image_docs_np(
            np.ascontiguousarray(image_emb, np.float32),
            np.ascontiguousarray(caption_emb, np.float32),
        )

    def _eval_call(self, fn):
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return fn()
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        return f"model_name={self.config.model_name!r}, embed_dim={self.config.embed_dim}"

    def config_json(self) -> str:
        return json.dumps(self.config.to_json(), indent=2)


def _l2(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
