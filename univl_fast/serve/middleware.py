"""The ASGI layer in front of the routes: auth, body limits, timing headers, access log, metrics.

For each HTTP request, in order (every refusal in the API's one error shape,
``univl_fast.serve.api_errors``):
1. a ``Host`` header not in ``allowed_hosts`` -> 400 (DNS rebinding; the probes answer any);
2. a missing or wrong API key on a protected path -> 401 before the body is read (no work);
3. a POST whose ``Content-Type`` is not JSON (or multipart, for embeddings) -> 415, so a
   cross-site form or ``text/plain`` fetch starts no work;
4. an engine request (``POST /v1/search`` or ``/v1/embeddings``) while ``max_queue`` are
   admitted -> 429 with ``Retry-After`` at once, before the body is read or parsed
   (``univl_fast.serve.admission``);
5. a declared ``Content-Length`` over the limit -> 413 before the body is read;
6. the body is read whole, within ``max_body_bytes`` (413 once a chunked body passes it), the
   worker's ``body_bytes_budget`` (429) and ``body_timeout_s`` (408 for a client trickling its
   body; the connection is closed), and a client that disconnects meanwhile is dropped without
   an answer. A body being read holds no admission slot; once it is in, admission is checked
   again (429);
7. the route runs on the buffered body; its answer gets ``Server-Timing`` (queue, encode,
   search, total in ms, where the route measured them), ``X-Request-Id`` and
   ``X-Content-Type-Options: nosniff``;
8. the request metrics, and one JSON access-log line when enabled.

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

from univl_fast.serve.admission import Admission
from univl_fast.serve.api_errors import error_bytes
from univl_fast.serve.auth import PROBE_PATHS, host_allowed, key_matches, needs_key
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


# Content types each POST route parses (anything else: 415 before the body is read).
_POST_TYPES = {
    "/v1/search": (b"application/json",),
    "/v1/embeddings": (b"application/json", b"multipart/form-data"),
}


class _BodyError(Exception):
    def __init__(self, status: int, message: str, extra: list | None = None):
        self.status = status
        self.message = message
        self.extra = extra or []


class _Disconnected(Exception):
    pass


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def _media_type(scope: Scope) -> bytes:
    value = _header(scope, b"content-type") or b""
    return value.split(b";", 1)[0].strip().lower()


async def _json_response(
    send, status: int, message: str, extra: list | None = None, code: str | None = None
) -> None:
    body = error_bytes(status, message, code=code)
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
                        (b"x-content-type-options", b"nosniff"),
                    ],
                }
            await send(message)

        try:
            await self._handle(scope, receive, send_timed, record)
        finally:
            self._account(scope, record, arrived, request_id)

    async def _handle(self, scope: Scope, receive, send, record: dict[str, Any]) -> None:
        path = scope.get("path", "")
        hosts = self.config.allowed_hosts
        if "*" not in hosts and path not in PROBE_PATHS:
            host = _header(scope, b"host")
            if not host_allowed(host, hosts):
                shown = (host or b"").decode("latin-1")[:100]
                await _json_response(
                    send,
                    400,
                    f"Host header {shown!r} is not one this service answers to "
                    f"(allowed: {', '.join(hosts)}; see --allowed-hosts)",
                    code="host_not_allowed",
                )
                return
        if self._key is not None and needs_key(path):
            if not key_matches(_header(scope, b"authorization"), self._key):
                await _json_response(
                    send,
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    [(b"www-authenticate", b"Bearer")],
                    code="invalid_api_key",
                )
                return
        method = scope.get("method")
        if method not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        accepted = _POST_TYPES.get(path) if method == "POST" else None
        if accepted is not None and _media_type(scope) not in accepted:
            await _json_response(
                send,
                415,
                f"{method} {path} takes Content-Type {' or '.join(a.decode() for a in accepted)}"
                f", got {(_header(scope, b'content-type') or b'none').decode('latin-1')[:100]!r}",
                [(b"connection", b"close")],
                code="unsupported_media_type",
            )
            return
        admission = self.admission
        if admission is None or accepted is None:
            await self._with_body(scope, receive, send, record, None)
            return
        if admission.full():  # refused before the body is read: no parsing, no engine work
            await self._refuse(send, record, admission)
            return
        await self._with_body(scope, receive, send, record, admission)

    async def _refuse(self, send, record: dict[str, Any], admission: Admission) -> None:
        record["status"] = 429
        await send(
            {"type": "http.response.start", "status": 429, "headers": admission.refusal_headers}
        )
        await send({"type": "http.response.body", "body": admission.refusal_body})

    async def _with_body(
        self, scope: Scope, receive, send, record: dict[str, Any], admission: Admission | None
    ) -> None:
        held = [0]  # body bytes counted against the admission's budget (released below)
        try:
            try:
                body = await self._read_body(scope, receive, admission, held)
            except _Disconnected:
                record["status"] = 499  # nginx's "client closed request": nothing was answered
                return
            except _BodyError as exc:
                # the rest of the body is not read: close the connection instead of reusing it
                await _json_response(
                    send, exc.status, exc.message, [(b"connection", b"close"), *exc.extra]
                )
                return
            record["bytes_in"] = len(body)
            if admission is None:
                await self.app(scope, _replay(body, receive), send)
                return
            if admission.full():  # filled up while this body was arriving
                await self._refuse(send, record, admission)
                return
            admission.inflight += 1
            try:
                await self.app(scope, _replay(body, receive), send)
            finally:
                admission.inflight -= 1
        finally:
            if admission is not None:
                admission.body_bytes -= held[0]

    def _reserve(self, admission: Admission | None, held: list[int], n: int) -> None:
        """Count ``n`` more body bytes against the worker's budget, or refuse (429)."""
        if admission is None:
            return
        if admission.body_bytes + n > admission.body_bytes_budget:
            raise _BodyError(
                429,
                f"request bodies in flight are over this worker's budget of "
                f"{admission.body_bytes_budget} bytes; retry later",
                admission.refusal_headers[2:],
            )
        admission.body_bytes += n
        held[0] += n

    async def _read_body(
        self, scope: Scope, receive, admission: Admission | None, held: list[int]
    ) -> bytes:
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
            self._reserve(admission, held, n)
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
                if size > held[0]:  # chunked (or more than declared): count as it arrives
                    self._reserve(admission, held, size - held[0])
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
