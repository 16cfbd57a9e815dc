"""Small value types shared by every stage (torch-free)."""

from __future__ import annotations

from typing import Literal, NamedTuple

TEXT = "text"
IMAGE = "image"
Modality = Literal["text", "image"]
MODALITIES = (TEXT, IMAGE)


class Hit(NamedTuple):
    """One ranked search result."""

    doc_id: str
    modality: str  # "text" | "image"
    score: float  # cosine similarity of unit vectors
