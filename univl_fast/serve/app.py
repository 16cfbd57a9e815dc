"""``create_app(engine, config)``: the FastAPI application of ``univl-fast serve``.

Endpoints: ``POST /v1/search``, ``POST /v1/embeddings`` (OpenAI-compatible: the ``openai`` SDK
and LangChain's ``OpenAIEmbeddings`` work unchanged; JSON or multipart image upload),
``GET /v1/models``, ``GET /health``, ``GET /ready``, ``GET /info``, ``GET /metrics``, the search
page ``GET /`` with ``GET /v1/docs/{doc_id}/image``, and OpenAPI at ``/openapi.json`` with
Swagger UI at ``/docs`` (served from the package). Every answer other than 200 has OpenAI's
error body (``univl_fast.serve.api_errors``), and ``/openapi.json`` lists each status a route
can answer with its body schema.

Engine work runs on a thread pool of ``max_queue`` threads, so the event loop never blocks.
Admission is decided at the front (``univl_fast.serve.admission``): an engine request arriving
while ``max_queue`` are in flight or admitted is answered 429 with ``Retry-After`` by the
middleware before its body is read, and the library's own ``Overloaded`` is answered 429 too;
a request whose
deadline (``request_timeout_s`` from its arrival) passes gets 504, and its slot is freed only
when its work has really finished, so memory and threads stay bounded under any load.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

import univl_fast
from univl_fast.errors import DeadlineExceeded, Overloaded
from univl_fast.interfaces import SearchEngine
from univl_fast.serve.admission import Admission, overloaded_message, retry_after_header
from univl_fast.serve.api_errors import ApiError, error_dict, param_of
from univl_fast.serve.config import ServeConfig
from univl_fast.serve.embeddings import (
    PixelBudget,
    check_items,
    embed,
    json_items,
    multipart_items,
)
from univl_fast.serve.info import service_info
from univl_fast.serve.limits import check_texts, limit_error
from univl_fast.serve.metrics import ServeMetrics
from univl_fast.serve.middleware import ARRIVED, ASYNC_TIMEOUT, STAGES, ServeMiddleware
from univl_fast.serve.openapi_doc import error_responses
from univl_fast.serve.schemas import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorResponse,
    Model,
    ModelList,
    SearchRequest,
    SearchResponse,
)

log = logging.getLogger("univl_fast.serve")

T = TypeVar("T")

WARMUP_QUERY = "warm-up query"


@dataclass
class ServeState:
    """What the routes share in one worker process."""

    engine: SearchEngine
    config: ServeConfig
    metrics: ServeMetrics
    docs: Any = None  # DocStore when --data was given
    info: dict[str, Any] = field(default_factory=dict)
    executor: ThreadPoolExecutor | None = None
    admission: Admission | None = None  # in-flight / admitted counters (the event loop's)
    pixels: PixelBudget | None = None  # decoded image pixels in flight (the pool's)
    model: str = "univl-fast"  # the served model's name (GET /v1/models)
    created: int = 0  # when the app was made (Unix seconds)
    ready: bool = False
    draining: bool = False


def create_app(
    engine: SearchEngine,
    config: ServeConfig | None = None,
    *,
    docs: Any = None,
    metrics: ServeMetrics | None = None,
) -> FastAPI:
    """The service over a loaded ``Engine`` (with an index).

    docs: a ``univl_fast.serve.docs.DocStore`` for snippets and thumbnails (default: built from
    ``config.data_dir`` when set). The app does not close the engine: its owner does.
    """
    config = config or ServeConfig()
    if not engine.has_index:
        raise ValueError("create_app: the engine has no index; load it with index=INDEX_DIR")
    metrics = metrics or ServeMetrics()
    if docs is None and config.data_dir:
        from univl_fast.serve.docs import DocStore

        docs = DocStore(config.data_dir)
    state = ServeState(engine=engine, config=config, metrics=metrics, docs=docs)
    state.admission = Admission(
        config.max_queue, config.retry_after_s, config.max_queue * config.max_body_bytes
    )
    state.pixels = PixelBudget(config.max_decoded_pixels)
    state.info = service_info(engine, config)
    state.model = str(state.info.get("model") or "univl-fast")
    state.created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Threads do not survive fork: each worker process makes its own pool here.
        state.executor = ThreadPoolExecutor(config.max_queue, thread_name_prefix="univl-serve")
        warm = asyncio.get_running_loop().create_task(_warm_up(state))
        try:
            yield
        finally:
            state.draining = True
            warm.cancel()
            state.executor.shutdown(wait=True, cancel_futures=False)

    app = FastAPI(
        title="univl-fast",
        version=univl_fast.__version__,
        description="Universal multi-modal dense retrieval (UniVL-DR): search and embeddings. "
        "Every answer other than 200 has the body ErrorResponse (OpenAI's error shape). With an "
        "API key, every route but /health, /ready, / and the docs needs "
        "'Authorization: Bearer <key>'.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.serve = state
    _add_error_handlers(app, state)
    _add_routes(app, state)
    app.add_middleware(ServeMiddleware, config=config, metrics=metrics, admission=state.admission)
    _document_bodies(app)
    return app


def _document_bodies(app: FastAPI) -> None:
    """Put the request-body models the routes parse themselves (SearchRequest,
    EmbeddingsRequest) into the OpenAPI components, where their requestBody refers to them."""
    make_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = make_schema()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (SearchRequest, EmbeddingsRequest, ErrorResponse):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _json_body(model: str) -> dict[str, Any]:
    """openapi_extra of a route that reads its JSON body itself."""
    ref = {"$ref": f"#/components/schemas/{model}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _path_param(name: str) -> dict[str, Any]:
    """openapi_extra of a route that reads a string path parameter itself (FastAPI would
    document a 422 for a parameter it validates, which a string path segment never fails)."""
    return {
        "parameters": [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]
    }


def parse_body(model: type[T], raw: bytes) -> T:
    """``raw`` parsed and validated as ``model`` in one pass (pydantic-core), errors shaped as
    FastAPI's own: invalid JSON -> 400, a wrong field -> 422 with ``loc`` ``["body", ...]``."""
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        return model.model_validate_json(raw)  # type: ignore[attr-defined]
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        # pydantic-core's parser refuses what Python's json accepts (lone surrogate escapes,
        # which the engine then reports per query): the slow path, as FastAPI itself parses
        try:
            obj = json.loads(raw)
        except ValueError:
            pass
        else:
            try:
                return model.model_validate(obj)  # type: ignore[attr-defined]
            except ValidationError as exc:
                errors = exc.errors(include_url=False)
    for e in errors:
        e["loc"] = ("body", *e["loc"])
    raise RequestValidationError(errors)


# ---------------------------------------------------------------------------- engine calls
async def _warm_up(state: ServeState) -> None:
    """One search (and so one encoder + index run) before /ready says yes."""
    try:
        await asyncio.get_running_loop().run_in_executor(
            state.executor, lambda: state.engine.search([WARMUP_QUERY], k=1)
        )
    except Exception:  # noqa: BLE001 - a failed warm-up leaves /ready at 503 and says why
        log.exception("warm-up search failed; /ready stays 503")
        return
    state.ready = True
    log.info("worker %d ready", os.getpid())


async def run_admitted(state: ServeState, request: Request, fn: Callable[[float], T]) -> T:
    """Run ``fn(remaining_deadline_s)`` on the engine pool, or refuse at once.

    Raises Overloaded (-> 429) when ``max_queue`` requests are already admitted, and
    DeadlineExceeded (-> 504) when the request's deadline passes first. The slot is held until
    ``fn`` has returned, even after a 504, so admitted work never exceeds ``max_queue``.
    """
    cfg = state.config
    admission = state.admission
    assert admission is not None
    scope_state = request.scope.setdefault("state", {})
    stages = scope_state.setdefault(STAGES, {})
    # No refusal while draining: a request that reached the app was accepted before the
    # shutdown began (uvicorn stops accepting at once), and graceful means it is answered.
    # The middleware refused at the front already when full; this catches slots still held by
    # work whose request got its 504 (and apps served without the middleware).
    if admission.admitted >= cfg.max_queue:
        raise Overloaded(
            overloaded_message(cfg.max_queue),
            limit=cfg.max_queue,
            retry_after_s=cfg.retry_after_s,
        )
    arrived = scope_state.get(ARRIVED, time.perf_counter())
    remaining = cfg.request_timeout_s - (time.perf_counter() - arrived)
    if remaining <= 0:
        raise DeadlineExceeded("before the work could start", timeout_s=cfg.request_timeout_s)
    admission.admitted += 1
    state.metrics.queue_depth.inc()
    loop = asyncio.get_running_loop()
    assert state.executor is not None
    queued = time.perf_counter()

    def timed() -> tuple[T, float]:
        started = time.perf_counter()
        return fn(cfg.request_timeout_s - (started - arrived)), started

    future = loop.run_in_executor(state.executor, timed)

    def release(_: object) -> None:
        admission.admitted -= 1
        state.metrics.queue_depth.dec()

    future.add_done_callback(release)
    try:
        if ASYNC_TIMEOUT is not None:  # a timer on this task (Python >= 3.11)
            async with ASYNC_TIMEOUT(remaining):
                result, started = await asyncio.shield(future)
        else:
            result, started = await asyncio.wait_for(asyncio.shield(future), remaining)
    except asyncio.TimeoutError:
        raise DeadlineExceeded(
            "while the engine was working", timeout_s=cfg.request_timeout_s
        ) from None
    stages["queue"] = started - queued
    return result


def _stage_times(state: ServeState, request: Request, timings: dict[str, float]) -> None:
    """A search's stages (Server-Timing, access log, histograms): queue = the hand-off to a
    pool thread + the wait for the engine's batcher; encode and search = of the batch that
    carried it (``Engine.search(timings=...)``)."""
    stages = request.scope["state"][STAGES]
    if not timings:  # nothing to encode (only empty queries)
        return
    stages["queue"] = stages.get("queue", 0.0) + timings.get("queue_s", 0.0)
    stages["encode"] = timings.get("encode_s", 0.0)
    stages["search"] = timings.get("search_s", 0.0)
    m = state.metrics
    for stage in ("queue", "encode", "search"):
        m.stage.labels(stage).observe(stages[stage])
    m.batch.observe(timings.get("batch_items", 0))


# ---------------------------------------------------------------------------- routes
def _add_routes(app: FastAPI, state: ServeState) -> None:
    cfg = state.config

    from univl_fast.serve.openapi_doc import ENGINE, GUARDED

    @app.get("/health", tags=["probes"])
    async def health() -> dict[str, Any]:
        """Liveness: the process answers (``pid``: the worker process that did)."""
        return {"status": "ok", "pid": os.getpid()}

    @app.get(
        "/ready",
        tags=["probes"],
        responses={
            200: {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"status": {"const": "ready"}},
                            "required": ["status"],
                        }
                    }
                }
            },
            **error_responses(503),
        },
    )
    async def ready() -> JSONResponse:
        """Readiness: 200 once the engine and index are loaded and warm; 503 before, and while
        shutting down (``code``: ``warming_up`` or ``draining``)."""
        if state.draining:
            raise ApiError(503, "the service is shutting down", code="draining")
        if not state.ready:
            raise ApiError(503, "the service is warming up", code="warming_up")
        return JSONResponse({"status": "ready"})

    @app.get("/info", tags=["service"], responses=error_responses(*GUARDED))
    async def info() -> dict[str, Any]:
        """Model, precision, runtime, index, measured recall, limits and versions."""
        return state.info

    @app.get(
        "/metrics",
        tags=["service"],
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **error_responses(*GUARDED),
        },
    )
    async def metrics() -> Response:
        """Prometheus exposition (text/plain, version 0.0.4)."""
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    @app.get(
        "/v1/models",
        response_model=ModelList,
        tags=["embeddings"],
        responses=error_responses(*GUARDED),
    )
    async def models() -> dict[str, Any]:
        """The served model (OpenAI's model list): its ``id`` is the ``model`` the embeddings
        route takes."""
        return {"object": "list", "data": [_model(state)]}

    @app.get(
        "/v1/models/{model}",
        response_model=Model,
        tags=["embeddings"],
        responses=error_responses(*GUARDED, 404),
        openapi_extra=_path_param("model"),
    )
    async def model(request: Request) -> dict[str, Any]:
        """One model (404 unless it is the served one)."""
        _check_model(state, request.path_params["model"])
        return _model(state)

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        tags=["search"],
        responses=error_responses(*ENGINE),
        openapi_extra=_json_body("SearchRequest"),
    )
    async def search(request: Request) -> Response:
        """Ranked documents per query. A query the engine cannot encode gets ``error`` and no
        hits; the others are answered.

        Body: ``SearchRequest``. The route parses and validates it in one pydantic-core pass
        and writes the ``SearchResponse`` with orjson (the same JSON FastAPI's own parsing and
        response model would give, at a fraction of the CPU)."""
        body = parse_body(SearchRequest, await request.body())
        check_texts(body.queries, cfg, "queries")
        if not 1 <= body.k <= cfg.max_k:
            raise limit_error(["body", "k"], f"k must be in 1..{cfg.max_k}, got {body.k}")
        if body.include_text and state.docs is None:
            raise limit_error(["body", "include_text"], "this service was started without --data")
        queries = body.queries
        k, modality = body.k, body.modality
        timings: dict[str, float] = {}

        def work(remaining: float) -> tuple[list[Any], dict[int, str]]:
            return _search(state, queries, k, modality, remaining, timings)

        hits, errors = await run_admitted(state, request, work)
        _stage_times(state, request, timings)
        text = state.docs.text if body.include_text else None
        results = [
            {
                "hits": [
                    {
                        "doc_id": h.doc_id,
                        "modality": h.modality,
                        "score": float(h.score),
                        "text": text(h.doc_id) if text is not None else None,
                    }
                    for h in (row or ())
                ],
                "error": errors.get(i),
            }
            for i, row in enumerate(hits)
        ]
        out = {"results": results, "k": k, "modality": modality}
        return Response(orjson.dumps(out), media_type="application/json")

    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingsResponse,
        tags=["embeddings"],
        responses=error_responses(*ENGINE, 404),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/EmbeddingsRequest"}
                    },
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "image": {
                                    "type": "array",
                                    "items": {"type": "string", "format": "binary"},
                                },
                                "caption": {"type": "array", "items": {"type": "string"}},
                                "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                                "model": {"type": "string"},
                                "dimensions": {"type": "integer"},
                            },
                            "required": ["image"],
                        }
                    },
                },
            }
        },
    )
    async def embeddings(request: Request) -> Response:
        """Unit float32 embeddings, OpenAI-compatible. JSON: ``input`` is a string or a list of
        strings and/or image documents ``{image: base64, caption}``. multipart/form-data: one or
        more ``image`` files with a ``caption`` each (in the same order). ``model`` (when given)
        must be the served one (``GET /v1/models``); ``dimensions`` must be the model's; ``user``
        is accepted. An input that cannot be embedded fails the request (400 naming it)."""
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            got = await multipart_items(request, cfg)
        else:
            got = await json_items(request)
        if got.model is not None:
            _check_model(state, got.model)
        dim = int(state.engine.dim)
        if got.dimensions is not None and got.dimensions != dim:
            raise ApiError(
                400,
                f"dimensions={got.dimensions}: this model gives {dim}-dimensional vectors and "
                "cannot shorten them (CLIP is not a Matryoshka model: a truncated vector would "
                f"be wrong); leave dimensions out or send {dim}",
                param="dimensions",
                code="dimensions_unsupported",
            )
        items, fmt = got.items, got.encoding_format
        check_items(items, cfg)
        pixels = state.pixels
        assert pixels is not None

        def work(remaining: float) -> tuple[np.ndarray, dict[int, str], int, float]:
            return embed(state.engine, items, cfg, pixels, remaining)

        vectors, errors, tokens, encode_s = await run_admitted(state, request, work)
        request.scope["state"][STAGES]["encode"] = encode_s
        state.metrics.stage.labels("encode").observe(encode_s)
        if errors:
            first = min(errors)
            more = f" ({len(errors) - 1} more inputs failed too)" if len(errors) > 1 else ""
            raise ApiError(
                400,
                f"input[{first}] cannot be embedded: {errors[first]}{more}",
                param=f"input[{first}]",
                code="invalid_input",
            )
        data = []
        for i in range(len(items)):
            vec = np.ascontiguousarray(vectors[i], dtype="<f4")
            emb: Any = base64.b64encode(vec.tobytes()).decode() if fmt == "base64" else vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        # the EmbeddingsResponse shape, written by orjson (a response model would re-validate
        # every float of every vector)
        out = {
            "object": "list",
            "data": data,
            "model": state.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(orjson.dumps(out), media_type="application/json")

    # The two engine routes also run as plain Starlette routes, matched first: the same
    # functions without FastAPI's per-request dependency solving (they take the Request and
    # parse it themselves). The FastAPI routes above stay for /docs and /openapi.json.
    for path, endpoint in (("/v1/search", search), ("/v1/embeddings", embeddings)):
        app.router.routes.insert(0, Route(path, endpoint, methods=["POST"]))

    @app.get(
        "/v1/docs/{doc_id}/image",
        tags=["documents"],
        response_class=Response,
        responses={
            200: {
                "description": "the image file, as stored",
                "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
            },
            **error_responses(*GUARDED, 404, 429, 500, 504),
        },
        openapi_extra=_path_param("doc_id"),
    )
    async def doc_image(request: Request) -> Response:
        """The image file of an image document (from the dataset's imgs.tsv). Runs under the
        same admission and deadline as the engine routes; private to the key holder's cache."""
        doc_id = request.path_params["doc_id"]
        docs = state.docs
        if docs is None:
            raise ApiError(404, "this service was started without --data", code="no_data")

        def read(_remaining: float) -> bytes | None:
            try:
                return docs.image(doc_id)
            except Exception:  # a broken tsv line is this doc's problem only
                log.exception("image of document %r could not be read", doc_id)
                raise ApiError(
                    500, f"the image of document {doc_id!r} could not be read", code="image_read"
                ) from None

        data = await run_admitted(state, request, read)
        if data is None:
            raise ApiError(404, f"no image document {doc_id!r}", param="doc_id", code="no_image")
        from univl_fast.serve.docs import image_content_type

        return Response(
            data,
            media_type=image_content_type(data),
            headers={"cache-control": "private, max-age=3600"},
        )

    @app.get("/docs", include_in_schema=False)
    async def docs_page() -> HTMLResponse:
        from univl_fast.serve.swagger import docs_page

        return docs_page(app.title)

    @app.get("/docs/static/{name}", include_in_schema=False)
    async def docs_static(name: str) -> Response:
        from univl_fast.serve.swagger import static_file

        found = static_file(name)
        if found is None:
            raise ApiError(404, f"no such file {name!r}", code="not_found")
        return found

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        from univl_fast.serve.page import page_html

        return HTMLResponse(
            page_html(state.docs is not None), headers={"cache-control": "no-cache"}
        )


def _model(state: ServeState) -> dict[str, Any]:
    return {
        "id": state.model,
        "object": "model",
        "created": state.created,
        "owned_by": "univl-fast",
    }


def _check_model(state: ServeState, model: str) -> None:
    if model != state.model:
        raise ApiError(
            404,
            f"the model {model!r} is not served here; this service serves {state.model!r} "
            "(GET /v1/models)",
            param="model",
            code="model_not_found",
        )


def _search(
    state: ServeState,
    queries: list[str],
    k: int,
    modality: str | None,
    remaining: float,
    timings: dict[str, float],
) -> tuple[list[Any], dict[int, str]]:
    """engine.search on a pool thread -> (hits per query, {position: error}); fills
    ``timings`` with the call's stages."""
    from univl_fast.search.engine import SearchError

    if remaining <= 0:
        raise DeadlineExceeded(
            "before the search was submitted", timeout_s=state.config.request_timeout_s
        )
    try:
        # the engine's own deadline drops the request from its queue if it is still waiting
        hits = state.engine.search(
            queries, k=k, modality=modality, timeout=remaining, timings=timings
        )
        return hits, {}
    except SearchError as exc:
        return exc.results, dict(exc.errors)


# ---------------------------------------------------------------------------- errors
def _add_error_handlers(app: FastAPI, state: ServeState) -> None:
    """Every error answer in the one shape (``univl_fast.serve.api_errors``)."""

    def answer(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
        return JSONResponse(error_dict(status, message, param, code), status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return answer(exc.status, exc.message, exc.param, exc.code, exc.headers or None)

    @app.exception_handler(Overloaded)
    async def overloaded(_request: Request, exc: Overloaded) -> JSONResponse:
        retry = exc.retry_after_s if exc.retry_after_s is not None else state.config.retry_after_s
        return answer(
            429,
            f"{exc} (limit {exc.limit})" if exc.limit is not None else str(exc),
            code="overloaded",
            headers={"retry-after": retry_after_header(retry).decode()},
        )

    @app.exception_handler(DeadlineExceeded)
    async def deadline(_request: Request, exc: DeadlineExceeded) -> JSONResponse:
        # the engine's own DeadlineExceeded names the time left to it; answer with the request's
        limit = state.config.request_timeout_s
        return answer(504, f"request deadline of {limit:g} s passed ({exc})", code="timeout")

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return answer(400, "the request body is not valid JSON", code="invalid_json")
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "invalid"}
        param = param_of(first.get("loc", ()))
        message = "; ".join(
            f"{param_of(e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors[:5]
        )
        if len(errors) > 5:
            message += f" (and {len(errors) - 5} more)"
        return answer(422, message, param, str(first.get("type")))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # the router's own 404 / 405 (no such path, wrong method)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return answer(
            exc.status_code, str(exc.detail), code=codes.get(exc.status_code), headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return answer(500, "internal error (logged by the service)", code="internal")
