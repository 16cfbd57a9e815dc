"""Request limits that depend on the service's settings, answered as 422 naming the limit and
the field (``param``) in the API's error shape."""

from __future__ import annotations

from typing import Any

from univl_fast.serve.api_errors import ApiError, param_of
from univl_fast.serve.config import ServeConfig


def limit_error(loc: list[Any], message: str) -> ApiError:
    param = param_of(loc)
    return ApiError(422, f"{param}: {message}" if param else message, param=param, code="limit")


def check_texts(texts: list[str], cfg: ServeConfig, field_name: str) -> None:
    if len(texts) > cfg.max_inputs:
        raise limit_error(
            ["body", field_name],
            f"{len(texts)} inputs, more than the limit of {cfg.max_inputs} per request",
        )
    for i, text in enumerate(texts):
        if len(text) > cfg.max_query_chars:
            raise limit_error(
                ["body", field_name, i],
                f"{len(text)} characters, more than the limit of {cfg.max_query_chars}",
            )
