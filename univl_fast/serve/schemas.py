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
    input: StrictStr | list[StrictStr | ImageInput] | list[StrictInt] | list[list[StrictInt]] = (
        Field(
            description="text (a string or a list of strings), or image documents "
            "({image: base64, caption}); text and image items may be mixed. Token-id arrays "
            "(OpenAI's tiktoken ids) are refused with 400: send text (LangChain: "
            "check_embedding_ctx_length=False)"
        )
    )
    model: StrictStr | None = Field(
        None, description="the served model's name (GET /v1/models); another name is a 404"
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes"
    )
    dimensions: StrictInt | None = Field(
        None,
        description="must equal the model's dimension (CLIP is not a Matryoshka model: a "
        "truncated vector would be wrong); another value is a 400",
    )
    user: StrictStr | None = Field(None, description="accepted (OpenAI's end-user id); unused")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="unit float32 vector (or its base64)")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding] = Field(description="one per input, in input order")
    model: str
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="when the engine was loaded (Unix seconds)")
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong, naming the input and the problem")
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    param: str | None = Field(description="the request field it is about, e.g. input[2].image")
    code: str | None = Field(description="machine-readable reason, e.g. model_not_found")


class ErrorResponse(BaseModel):
    """Every non-200 answer of the API (OpenAI's error shape)."""

    error: ErrorDetail
