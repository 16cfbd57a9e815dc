"""The one error body of the HTTP API, OpenAI's: ``{"error": {"message", "type", "param",
"code"}}``, for every status any route or the middleware answers (so the ``openai`` SDK and
friends show the message), and :class:`ApiError`, what a route raises to answer with it."""

from __future__ import annotations

from typing import Any

import orjson

from univl_fast.errors import UnivlFastError

# status -> the error ``type`` (OpenAI's names where it has one)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ApiError(UnivlFastError, ValueError):
    """An answer other than 200: ``status``, a message for people, the request field it is
    about (``param``, e.g. ``input[2].image``) and a machine-readable ``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_dict(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(
                status, "invalid_request_error" if status < 500 else "server_error"
            ),
            "param": param,
            "code": code,
        }
    }


def error_bytes(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> bytes:
    return orjson.dumps(error_dict(status, message, param, code))


def param_of(loc: Any) -> str | None:
    """A validation error's location as a request field: ``("body", "input", 2, "image")`` ->
    ``input[2].image``; None for the body as a whole."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None
