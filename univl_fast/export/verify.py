"""Parity of exported graphs against the PyTorch model (torch world).

Every graph is run on real inputs and compared row by row with open_clip's own
``encode_text`` (ids padded to the full context, as open_clip does) / ``encode_image``. The
reference outputs need torch (this module); the metrics, the runs and the checks do not and
live in ``univl_fast.runtime.parity`` (re-exported here), so TensorRT plans can be built and checked on
a GPU host without torch and the runtime can re-check an engine where it is loaded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from univl_fast.runtime.parity import (  # noqa: F401 - the exporter's verification API
    Limits,
    Outputs,
    Parity,
    Reference,
    SampleInputs,
    _parity,
    _session,
    check_combined,
    check_graph,
    check_native_text,
    check_tower,
    compare,
    compare_combined,
    not_measured,
    row_cosines,
    row_rel_l2,
    run_graph,
    run_image_graph,
    run_native_text,
    run_text_graph,
    run_texts,
    tower_outputs,
)
from univl_fast.runtime.tokenizer import ClipTokenizer


@torch.no_grad()
def text_reference(clip: nn.Module, tokenizer: ClipTokenizer, texts: list[str]) -> np.ndarray:
    """open_clip's encode_text on ids padded to the context length: float64 (n, d)."""
    ids = torch.from_numpy(tokenizer.tokenize_padded(texts))
    return clip.encode_text(ids).double().numpy()


@torch.no_grad()
def image_reference(clip: nn.Module, pixels: np.ndarray) -> np.ndarray:
    return clip.encode_image(torch.from_numpy(pixels)).double().numpy()


def reference(clip: nn.Module, inputs: SampleInputs) -> Reference:
    tok = inputs.tokenizer
    return Reference(
        text_reference(clip, tok, inputs.texts),
        text_reference(clip, tok, inputs.captions),
        image_reference(clip, inputs.pixels),
    )
