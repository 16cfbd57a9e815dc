"""``POST /v1/embeddings``: the inputs of a JSON or multipart request, and their embedding on an
engine pool thread (text documents and image documents; bad items reported per item)."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from univl_fast.interfaces import SearchEngine
from univl_fast.serve.config import ServeConfig
from univl_fast.serve.limits import limit_error
from univl_fast.serve.schemas import EmbeddingsRequest, ImageInput

_ITEMS = TypeAdapter(EmbeddingsRequest)


async def json_items(request: Request) -> tuple[list[Any], str]:
    raw = await request.body()
    try:
        body = _ITEMS.validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    items: list[Any] = [body.input] if isinstance(body.input, str) else list(body.input)
    out: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, ImageInput):
            try:
                data = base64.b64decode(item.image, validate=True)
            except ValueError:
                raise limit_error(["body", "input", i, "image"], "not valid base64") from None
            out.append((data, item.caption))
        else:
            out.append(item)
    return out, body.encoding_format


async def multipart_items(request: Request, cfg: ServeConfig) -> tuple[list[Any], str]:
    form = await request.form(max_files=cfg.max_inputs + 1, max_fields=2 * cfg.max_inputs + 4)
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
    out: list[Any] = []
    for i, upload in enumerate(images):
        if isinstance(upload, str):
            raise limit_error(["body", "image", i], "must be a file upload")
        caption = captions[i] if captions else ""
        out.append((await upload.read(), str(caption)))
    return out, str(fmt)


def embed(
    engine: SearchEngine, items: list[Any], max_image_pixels: int
) -> tuple[np.ndarray, list[int], dict[int, str], int, float]:
    """Embed text items and (bytes, caption) image items -> ((n, d) float32 unit rows, their
    input positions, {position: error}, tokens, seconds spent encoding)."""
    t0 = time.perf_counter()
    errors: dict[int, str] = {}
    texts = [(i, x) for i, x in enumerate(items) if isinstance(x, str)]
    images: list[tuple[int, bytes, str]] = []
    for i, x in enumerate(items):
        if isinstance(x, str):
            continue
        data, caption = x
        problem = _image_problem(data, max_image_pixels)
        if problem:
            errors[i] = problem
        else:
            images.append((i, data, caption))
    parts: list[tuple[int, np.ndarray]] = []
    if texts:
        res = engine.encode_text_docs([t for _, t in texts], on_error="skip")
        for err in res.errors:
            errors[texts[err.index][0]] = err.reason
        parts += [
            (texts[j][0], row) for j, row in zip(res.indices.tolist(), res.embeddings, strict=True)
        ]
    if images:
        res = engine.encode_image_docs(
            [d for _, d, _ in images], [c for _, _, c in images], on_error="skip"
        )
        for err in res.errors:
            errors[images[err.index][0]] = err.reason
        parts += [
            (images[j][0], row) for j, row in zip(res.indices.tolist(), res.embeddings, strict=True)
        ]
    encode_s = time.perf_counter() - t0
    parts.sort(key=lambda p: p[0])
    dim = int(engine.dim)
    vectors = np.stack([r for _, r in parts]) if parts else np.zeros((0, dim), np.float32)
    tokens = engine.count_tokens([t for _, t in texts] + [c for _, _, c in images])
    good = [p[0] for p in parts]
    return vectors.astype(np.float32, copy=False), good, errors, tokens, encode_s


def _image_problem(data: bytes, max_pixels: int) -> str | None:
    """Why an uploaded image is refused before decoding (None when its header is fine). Reads
    the header only, so a decompression bomb costs nothing."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Exception:  # noqa: BLE001 - undecodable: the encoder reports it with its reason
        return None
    if w * h > max_pixels:
        return f"image of {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}"
    return None
