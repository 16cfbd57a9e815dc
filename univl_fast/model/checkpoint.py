"""Reading weight files a user has, without unpickling arbitrary objects.

Accepted (all local files, nothing is downloaded):

- our checkpoint dir: ``model.safetensors`` + ``model_config.json``;
- a ``.safetensors`` file;
- OpenAI CLIP state dicts and the paper's released CLIP-DPR / UniVL-DR checkpoints (OpenAI
  ViT-B/32 state dicts, possibly wrapped in ``{"model": ..., "epoch": ...}``), open_clip
  checkpoints (``{"state_dict": ...}``, optional ``module.`` prefix): read with
  ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers;
- OpenAI JIT archives: loaded with ``torch.jit.load``. That runs TorchScript (a restricted
  language executed by torch, not pickled Python objects) and we keep only its state_dict.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from univl_fast.errors import UnivlFastError

# buffers that OpenAI's JIT archives and state dicts carry but the module does not have
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "model.", "clip.", "_orig_mod.")
# keys of open_clip's CustomTextCLIP layout (text tower under "text.") -> CLIP layout
_TEXT_KEYS = (
    "text_projection",
    "positional_embedding",
    "token_embedding",
    "transformer",
    "ln_final",
)


class CheckpointError(UnivlFastError, ValueError):
    """A checkpoint file is missing, corrupt or does not fit the model."""


def _is_jit_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat ``{name: tensor}`` dict (no model needed)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: file not found")
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path}: is a directory but has no model.safetensors + model_config.json"
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: zero-byte file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {path}: corrupt or truncated safetensors ({exc})"
            ) from None
    if _is_jit_archive(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any loader failure names the file
            raise CheckpointError(
                f"checkpoint {path}: cannot read TorchScript archive ({exc})"
            ) from None
        obj: Any = module.state_dict()
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"checkpoint {path}: refused or corrupt: holds objects other than tensors and plain "
                f"containers, or is damaged ({str(exc).splitlines()[0]})"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
            raise CheckpointError(
                f"checkpoint {path}: corrupt or truncated file ({str(exc).splitlines()[0]})"
            ) from None
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}}
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"checkpoint {path}: no state dict found (got {type(obj).__name__})")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        keys = ", ".join(list(map(str, obj))[:5])
        raise CheckpointError(f"checkpoint {path}: no tensors found (top-level keys: {keys})")
    return sd


def normalize_state_dict(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict:
    """Map a foreign state dict onto open_clip CLIP's key layout (prefixes, text tower, extras)."""
    sd = dict(sd)
    for key in _OPENAI_EXTRA_KEYS:
        if key not in expected:
            sd.pop(key, None)
    for prefix in _PREFIXES:
        if (
            sd
            and all(k.startswith(prefix) for k in sd)
            and not any(k.startswith(prefix) for k in expected)
        ):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    if "text.token_embedding.weight" in sd and "token_embedding.weight" in expected:
        sd = {
            (k[5:] if k.startswith("text.") and k[5:].split(".")[0] in _TEXT_KEYS else k): v
            for k, v in sd.items()
        }
    if "logit_scale" in sd and "logit_scale" in expected:
        if sd["logit_scale"].shape != expected["logit_scale"].shape:
            sd["logit_scale"] = sd["logit_scale"].reshape(expected["logit_scale"].shape)
    sd.pop("attn_mask", None)  # a non-persistent buffer some exports include
    return sd


def check_compatible(
    sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], model_name: str, source: Path
) -> None:
    """Refuse a checkpoint whose keys or shapes differ from the model's, naming the first ones."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches, first: " + "; ".join(shapes[:3]))
    if missing:
        parts.append(f"{len(missing)} keys missing, first: {', '.join(missing[:3])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, first: {', '.join(unexpected[:3])}")
    raise CheckpointError(
        f"checkpoint {source} does not fit model {model_name!r} (a different architecture?): "
        + " | ".join(parts)
    )
