"""The ASGI layer in front of the routes: auth, body limits, timing headers, access log, metrics.

For each HTTP request, in order:
1. a missing or wrong API key on a protected path -> 401 before the body is read (no work);
2. an engine request (``POST /v1/search`` or ``/v1/embeddings``) while ``max_queue`` are in
   flight or admitted -> 429 with ``Retry-After`` at once, before the body is read or parsed
   (``univl_fast.serve.admission``);
3. a declared ``Content-Length`` over the limit -> 413 before the body is read;
4. the body is read whole, within ``max_body_bytes`` (413 once a chunked body passes it) and
   ``body_timeout_s`` (408 for a client trickling its body; the connection is closed), and a
   client that disconnects meanwhile is dropped without an answer;
5. the route runs on the buffered body; its answer gets ``Server-Timing`` (queue, encode,
   search, total in ms, where the route measured them) and ``X-Request-Id``;
6. the request metrics, and one JSON access-log line when enabled.

The hot path is kept lean: metric children are looked up once per (route, method, status), the
request id is 64 bits of the process's PRNG, and the ready-made 429 is sent without building anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

from univl_fast.serve.admission import ENGINE_PATHS, Admission
from univl_fast.serve.auth import key_matches, needs_key
from univl_fast.serve.config import ServeConfig
from univl_fast.serve.metrics import ServeMetrics, route_label

access_log = logging.getLogger("univl_fast.serve.access")

Scope = dict[str, Any]
Message = dict[str, Any]

# Methods whose body the middleware reads (and bounds) before the route runs.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# scope["state"] keys the routes fill in (Starlette's request.state is scope["state"]).
ARRIVED = "univl_arrived"  # perf_counter at arrival (request deadlines count from it)
STAGES = "univl_stages"  # {"queue": s, "encode": s, "search": s}
# asyncio.timeout (Python >= 3.11); wait_for before (which wraps the read in a task)
ASYNC_TIMEOUT = getattr(asyncio, "timeout", None)
# the random module's own generator: it is reseeded in every forked worker, so ids differ
_bits = random.getrandbits


class _BodyError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message


class _Disconnected(Exception):
    pass


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


async def _json_response(send, status: int, detail: str, extra: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ServeMiddleware:
    def __init__(
        self,
        app,
        config: ServeConfig,
        metrics: ServeMetrics,
        admission: Admission | None = None,
    ):
        self.app = app
        self.config = config
        self.metrics = metrics
        self.admission = admission
        self._key = config.api_key.encode() if config.api_key is not None else None
        # (route, method, status) -> (requests counter child, latency histogram child)
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()
        state = scope.setdefault("state", {})
        state[ARRIVED] = arrived
        # 64 random bits from the process's PRNG: no syscall (os.urandom's drops the GIL, and
        # getting it back from the engine's threads costs more than the id itself)
        request_id = f"{_bits(64):016x}"
        record: dict[str, Any] = {"status": 0, "bytes_in": 0}

        async def send_timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", ()),
                        (b"server-timing", _server_timing(state, arrived).encode()),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            await send(message)

        try:
            await self._handle(scope, receive, send_timed, record)
        finally:
            self._account(scope, record, arrived, request_id)

    async def _handle(self, scope: Scope, receive, send, record: dict[str, Any]) -> None:
        path = scope.get("path", "")
        if self._key is not None and needs_key(path):
            if not key_matches(_header(scope, b"authorization"), self._key):
                await _json_response(
                    send,
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        method = scope.get("method")
        if method not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        admission = self.admission
        if admission is None or method != "POST" or path not in ENGINE_PATHS:
            await self._with_body(scope, receive, send, record)
            return
        if admission.full():  # refused before the body is read: no parsing, no engine work
            record["status"] = 429
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": admission.refusal_headers,
                }
            )
            await send({"type": "http.response.body", "body": admission.refusal_body})
            return
        admission.inflight += 1
        try:
            await self._with_body(scope, receive, send, record)
        finally:
            admission.inflight -= 1

    async def _with_body(self, scope: Scope, receive, send, record: dict[str, Any]) -> None:
        try:
            body = await self._read_body(scope, receive)
        except _Disconnected:
            record["status"] = 499  # nginx's "client closed request": nothing was answered
            return
        except _BodyError as exc:
            # the rest of the body is not read: close the connection instead of reusing it
            await _json_response(send, exc.status, exc.message, [(b"connection", b"close")])
            return
        record["bytes_in"] = len(body)
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, scope: Scope, receive) -> bytes:
        limit = self.config.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise _BodyError(400, "Content-Length is not a number") from None
            if n > limit:
                raise _BodyError(
                    413, f"request body of {n} bytes is over the limit of {limit} bytes"
                )
        chunks: list[bytes] = []
        size = 0

        async def read_all() -> None:
            nonlocal size
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _BodyError(413, f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return

        try:
            if ASYNC_TIMEOUT is not None:  # a timer on this task, not a task of its own per request
                async with ASYNC_TIMEOUT(self.config.body_timeout_s):
                    await read_all()
            else:
                await asyncio.wait_for(read_all(), self.config.body_timeout_s)
        except asyncio.TimeoutError:
            raise _BodyError(
                408,
                f"request body not received within {self.config.body_timeout_s:g} s "
                f"({size} bytes arrived)",
            ) from None
        return b"".join(chunks)

    def _account(
        self, scope: Scope, record: dict[str, Any], arrived: float, request_id: str
    ) -> None:
        seconds = time.perf_counter() - arrived
        route = route_label(scope.get("path", ""))
        method = scope.get("method", "")
        status = record["status"] or 500
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:
            m = self.metrics
            series = (m.requests.labels(route, method, str(status)), m.latency.labels(route))
            if len(self._series) < 4096:  # routes are templates; bounded all the same
                self._series[key] = series
        series[0].inc()
        series[1].observe(seconds)
        if not self.config.access_log or not access_log.isEnabledFor(logging.INFO):
            return
        client = scope.get("client") or ("", 0)
        access_log.info(
            json.dumps(
                {
                    "ts": round(time.time(), 3),
                    "request_id": request_id,
                    "client": f"{client[0]}:{client[1]}",
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status,
                    "ms": round(seconds * 1000, 3),
                    "bytes_in": record["bytes_in"],
                    **{
                        f"{k}_ms": round(v * 1000, 3)
                        for k, v in scope.get("state", {}).get(STAGES, {}).items()
                    },
                }
            )
        )


def _replay(body: bytes, receive):
    """A receive that hands the buffered body to the route once, then listens to the client
    (so a route can still notice a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _server_timing(state: dict[str, Any], arrived: float) -> str:
    parts = [f"{k};dur={v * 1000:.3f}" for k, v in state.get(STAGES, {}).items()]
    parts.append(f"total;dur={(time.perf_counter() - arrived) * 1000:.3f}")
    return ", ".join(parts)
