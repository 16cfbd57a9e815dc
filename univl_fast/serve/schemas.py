"""Request and response bodies of the HTTP API (pydantic; shown at ``/docs``).

Types are strict where a coercion would hide a client bug (``k: "10"`` or ``k: true`` is a 422,
not 10 or 1). Limits that depend on the service's settings (``max_inputs``, ``max_k``, query
length) are checked by the handlers, which name the limit in the 422.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Strict):
    queries: list[StrictStr] = Field(
        description="query texts; an empty or whitespace-only query gets an empty hit list"
    )
    k: StrictInt = Field(10, description="hits per query (1 ... the service's max_k)")
    modality: Literal["text", "image"] | None = Field(
        None, description="search only text docs or only image docs (null: both)"
    )
    include_text: StrictBool = Field(
        False,
        description="add each hit's text (text docs) or caption (image docs) when the service "
        "was started with --data",
    )


class SearchHit(BaseModel):
    doc_id: str
    modality: Literal["text", "image"]
    score: float = Field(description="cosine similarity")
    text: str | None = Field(None, description="snippet or caption (include_text)")


class QueryResult(BaseModel):
    hits: list[SearchHit] = Field(description="best first; empty for an empty query")
    error: str | None = Field(None, description="why this query could not be searched")


class SearchResponse(BaseModel):
    results: list[QueryResult] = Field(description="one per query, in request order")
    k: int
    modality: Literal["text", "image"] | None


class ImageInput(_Strict):
    image: StrictStr = Field(description="the image file's bytes, base64 (PNG, JPEG, ...)")
    caption: StrictStr = Field("", description="the image document's caption")


class EmbeddingsRequest(_Strict):
    input: StrictStr | list[StrictStr | ImageInput] = Field(
        description="text (a string or a list of strings), or image documents "
        "({image: base64, caption}); text and image items may be mixed"
    )
    model: StrictStr | None = Field(None, description="accepted for OpenAI compatibility")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes"
    )


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="unit float32 vector (or its base64)")


class ItemError(BaseModel):
    index: int
    message: str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding] = Field(description="one per good input, in input order")
    model: str
    usage: Usage
    errors: list[ItemError] = Field(
        default_factory=list, description="inputs that could not be embedded, with the reason"
    )
