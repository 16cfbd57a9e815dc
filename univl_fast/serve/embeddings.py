"""``POST /v1/embeddings``: the inputs of a JSON or multipart request, checked the way OpenAI's
API checks them (``model``, ``dimensions``, empty input, token-id arrays), and their embedding
on an engine pool thread (text documents and image documents). A bad item fails the whole
request (400 naming it): clients pair results with inputs by position.

Decoded image pixels in flight are bounded per worker process (:class:`PixelBudget`): an image
batch waits for its share of ``max_decoded_pixels`` (within the request's deadline), so many
concurrent uploads of large images cannot multiply the decode memory by the pool size.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from univl_fast.errors import DeadlineExceeded
from univl_fast.interfaces import SearchEngine
from univl_fast.serve.api_errors import ApiError
from univl_fast.serve.config import ServeConfig
from univl_fast.serve.limits import limit_error
from univl_fast.serve.schemas import EmbeddingsRequest, ImageInput

_ITEMS = TypeAdapter(EmbeddingsRequest)

TOKEN_IDS_MESSAGE = (
    "input holds token ids: this service embeds text, and OpenAI's token ids (tiktoken) are not "
    "this model's (CLIP BPE); send the text itself (LangChain's OpenAIEmbeddings: "
    "check_embedding_ctx_length=False)"
)


@dataclass
class EmbeddingsInput:
    items: list[Any]  # str (text) or (image bytes, caption)
    encoding_format: str
    model: str | None
    dimensions: int | None


async def json_items(request: Request) -> EmbeddingsInput:
    raw = await request.body()
    try:
        body = _ITEMS.validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    items: list[Any] = [body.input] if isinstance(body.input, str) else list(body.input)
    out: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, (int, list)):
            raise ApiError(400, TOKEN_IDS_MESSAGE, param="input", code="token_ids_unsupported")
        if isinstance(item, ImageInput):
            try:
                data = base64.b64decode(item.image, validate=True)
            except ValueError:
                raise limit_error(["body", "input", i, "image"], "not valid base64") from None
            out.append((data, item.caption))
        else:
            out.append(item)
    return EmbeddingsInput(out, body.encoding_format, body.model, body.dimensions)


async def multipart_items(request: Request, cfg: ServeConfig) -> EmbeddingsInput:
    form = await request.form(max_files=cfg.max_inputs + 1, max_fields=2 * cfg.max_inputs + 8)
    images = form.getlist("image")
    captions = form.getlist("caption")
    fmt = form.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise limit_error(["body", "encoding_format"], "must be 'float' or 'base64'")
    if not images:
        raise limit_error(["body", "image"], "multipart upload without an 'image' file")
    if captions and len(captions) != len(images):
        raise limit_error(
            ["body", "caption"],
            f"{len(images)} images but {len(captions)} captions (give one per image, or none)",
        )
    if len(images) > cfg.max_inputs:
        raise limit_error(
            ["body", "image"],
            f"{len(images)} inputs, more than the limit of {cfg.max_inputs} per request",
        )
    dims = form.get("dimensions")
    try:
        dimensions = int(str(dims)) if dims is not None else None
    except ValueError:
        raise limit_error(["body", "dimensions"], "must be an integer") from None
    model = form.get("model")
    out: list[Any] = []
    for i, upload in enumerate(images):
        if isinstance(upload, str):
            raise limit_error(["body", "image", i], "must be a file upload")
        caption = captions[i] if captions else ""
        out.append((await upload.read(), str(caption)))
    return EmbeddingsInput(out, str(fmt), str(model) if model is not None else None, dimensions)


def check_items(items: list[Any], cfg: ServeConfig) -> None:
    """Refuse an empty request (400) and one over the limits (422) before any work."""
    if not items:
        raise ApiError(400, "input must not be empty", param="input", code="empty_input")
    if len(items) > cfg.max_inputs:
        raise limit_error(
            ["body", "input"],
            f"{len(items)} inputs, more than the limit of {cfg.max_inputs} per request",
        )
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else item[1]
        if len(text) > cfg.max_query_chars:
            where = (
                ["body", "input", i] if isinstance(item, str) else ["body", "input", i, "caption"]
            )
            raise limit_error(
                where, f"{len(text)} characters, more than the limit of {cfg.max_query_chars}"
            )


class PixelBudget:
    """Decoded image pixels in flight in one worker process (all pool threads together)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, timeout_s: float) -> None:
        """Wait until ``n`` (<= limit) more pixels fit, at most ``timeout_s`` (DeadlineExceeded)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.used + n > self.limit:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if self.used + n <= self.limit:
                        break
                    raise DeadlineExceeded(
                        f"waiting for {n} decoded pixels of the worker's budget of {self.limit}",
                        timeout_s=timeout_s,
                    )
            self.used += n

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


def embed(
    engine: SearchEngine,
    items: list[Any],
    cfg: ServeConfig,
    budget: PixelBudget,
    remaining_s: float,
) -> tuple[np.ndarray, dict[int, str], int, float]:
    """Embed text items and (bytes, caption) image items -> ((n, d) float32 unit rows in input
    order, {position: error}, tokens, seconds spent encoding). With any error, no rows."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + remaining_s
    errors: dict[int, str] = {}
    texts = [(i, x) for i, x in enumerate(items) if isinstance(x, str)]
    images: list[tuple[int, bytes, str, int]] = []
    for i, x in enumerate(items):
        if isinstance(x, str):
            continue
        data, caption = x
        pixels, problem = _image_pixels(data, cfg.max_image_pixels)
        if problem:
            errors[i] = problem
        else:
            images.append((i, data, caption, pixels))
    dim = int(engine.dim)
    if errors:
        return np.zeros((0, dim), np.float32), errors, 0, time.perf_counter() - t0
    rows: dict[int, np.ndarray] = {}
    if texts:
        res = engine.encode_text_docs([t for _, t in texts], on_error="skip")
        for err in res.errors:
            errors[texts[err.index][0]] = err.reason
        for j, row in zip(res.indices.tolist(), res.embeddings, strict=True):
            rows[texts[j][0]] = row
    for chunk in _budget_chunks(images, budget.limit):
        need = sum(p for *_, p in chunk)
        budget.acquire(need, deadline - time.monotonic())
        try:
            res = engine.encode_image_docs(
                [d for _, d, _, _ in chunk], [c for _, _, c, _ in chunk], on_error="skip"
            )
        finally:
            budget.release(need)
        for err in res.errors:
            errors[chunk[err.index][0]] = err.reason
        for j, row in zip(res.indices.tolist(), res.embeddings, strict=True):
            rows[chunk[j][0]] = row
    encode_s = time.perf_counter() - t0
    if errors:
        return np.zeros((0, dim), np.float32), errors, 0, encode_s
    vectors = np.stack([rows[i] for i in range(len(items))]).astype(np.float32, copy=False)
    tokens = engine.count_tokens([t for _, t in texts] + [c for _, _, c, _ in images])
    return vectors, errors, tokens, encode_s


def _budget_chunks(
    images: list[tuple[int, bytes, str, int]], limit: int
) -> list[list[tuple[int, bytes, str, int]]]:
    """Consecutive groups of images whose decoded pixels fit ``limit`` together."""
    chunks: list[list[tuple[int, bytes, str, int]]] = []
    total = 0
    for img in images:
        if not chunks or total + img[3] > limit:
            chunks.append([])
            total = 0
        chunks[-1].append(img)
        total += img[3]
    return chunks


def _image_pixels(data: bytes, max_pixels: int) -> tuple[int, str | None]:
    """(decoded pixels, why the image is refused before decoding or None). Reads the header
    only, so a decompression bomb costs nothing; an undecodable file counts 0 pixels (the
    encoder reports it with its reason)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Exception:  # noqa: BLE001 - undecodable: the encoder reports it with its reason
        return 0, None
    if w * h > max_pixels:
        return w * h, f"image of {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}"
    return w * h, None
