"""The HTTP service (``univl-fast serve``): FastAPI + uvicorn + prometheus-client, torch-free.

Modules: ``config`` (ServeConfig: limits and settings), ``schemas`` (request/response bodies),
``limits`` (422s naming a limit), ``auth`` (bearer key), ``middleware`` (body limits, timing
headers, access log), ``metrics`` (Prometheus), ``embeddings`` (/v1/embeddings inputs and
work), ``info`` (/info), ``docs`` (snippets and images for the page), ``page`` (the search
page), ``app`` (create_app: routes, admission, errors), ``prefork`` (the pre-forking runner),
``cli`` (the command). Needs the ``serve`` extra: ``pip install univl-fast[serve]``."""

from __future__ import annotations

from univl_fast.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(engine, config=None, **kwargs):
    """The FastAPI app over a loaded engine (see ``univl_fast.serve.app.create_app``)."""
    from univl_fast.serve.app import create_app as _create_app

    return _create_app(engine, config, **kwargs)
