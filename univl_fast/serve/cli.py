"""``univl-fast serve``: the HTTP service (search, embeddings, page, probes, metrics).

    univl-fast serve --engine ENGINE --index INDEX [--data DIR] [--host 127.0.0.1]
                     [--port 8080] [--workers N] [--api-key-file F]

Loads and warms the engine once, binds the socket, then serves in this process
(``--workers 1``) or in N pre-forked worker processes. Logs the URL, the page and the API docs
path when it accepts requests. SIGTERM / Ctrl-C drain: in-flight requests finish, new ones are
refused. Torch-free.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile

from univl_fast.cli.engine_args import add_engine_arguments, load_engine, open_engine
from univl_fast.serve.config import ServeConfig, ServeConfigError, read_api_key_file

log = logging.getLogger("univl_fast.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    add_engine_arguments(p)
    p.add_argument("--data", help="dataset dir: snippets and image thumbnails for the page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free one)")
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes, forked after loading (default 1)"
    )
    p.add_argument(
        "--api-key-file",
        help="file holding the bearer API key clients must send (default: no auth)",
    )
    p.add_argument(
        "--allowed-hosts",
        help="comma-separated Host header names answered ('*': any; default: --host and "
        "localhost, or any when --host is a wildcard address)",
    )
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="(413)")
    g.add_argument("--max-inputs", type=int, default=d.max_inputs, help="per request (422)")
    g.add_argument("--max-k", type=int, default=d.max_k, help="hits per query (422)")
    g.add_argument("--max-query-chars", type=int, default=d.max_query_chars, help="(422)")
    g.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels, help="per image")
    g.add_argument(
        "--max-decoded-pixels",
        type=int,
        default=d.max_decoded_pixels,
        help="decoded image pixels in flight per worker, all requests together",
    )
    g.add_argument(
        "--max-queue", type=int, default=d.max_queue, help="admitted requests per worker (429)"
    )
    g.add_argument(
        "--request-timeout", type=float, default=d.request_timeout_s, help="seconds (504)"
    )
    g.add_argument("--body-timeout", type=float, default=d.body_timeout_s, help="seconds (408)")
    g.add_argument(
        "--graceful-timeout",
        type=float,
        default=d.graceful_timeout_s,
        help="seconds in-flight requests get on shutdown",
    )
    access = p.add_mutually_exclusive_group()
    access.add_argument(
        "--access-log", action="store_true", help="one JSON access-log line per request"
    )
    access.add_argument(
        "--no-access-log", action="store_true", help="no access-log lines (the default)"
    )
    p.add_argument("--log-level", default="info", help="debug | info | warning (default info)")


def _config(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        max_body_bytes=args.max_body_bytes,
        max_inputs=args.max_inputs,
        max_k=args.max_k,
        max_query_chars=args.max_query_chars,
        max_image_pixels=args.max_image_pixels,
        max_decoded_pixels=args.max_decoded_pixels,
        allowed_hosts=allowed_hosts(args.host, args.allowed_hosts),
        request_timeout_s=args.request_timeout,
        body_timeout_s=args.body_timeout,
        max_queue=args.max_queue,
        graceful_timeout_s=args.graceful_timeout,
        api_key=read_api_key_file(args.api_key_file) if args.api_key_file else None,
        data_dir=args.data,
        access_log=bool(args.access_log),
    )


LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::")


def allowed_hosts(host: str, given: str | None) -> tuple[str, ...]:
    """The Host names answered: ``given`` (comma-separated), else the bound host and localhost;
    any (``*``) when bound to a wildcard address, whose names this process cannot know."""
    if given:
        return tuple(h.strip() for h in given.split(",") if h.strip()) or ("*",)
    if host.strip("[]") in WILDCARDS:
        log.warning(
            "listening on %s: every Host header is answered; name this machine's names with "
            "--allowed-hosts to refuse others (DNS rebinding)",
            host or "all addresses",
        )
        return ("*",)
    return tuple(dict.fromkeys((host.strip("[]").lower(), *LOCAL_NAMES)))


def run(args: argparse.Namespace) -> int:
    # univl-fast's main shows the package's logs on stderr; this sets how much of them
    logging.getLogger("univl_fast").setLevel(
        getattr(logging, str(args.log_level).upper(), logging.INFO)
    )
    if args.workers < 1:
        print(f"univl-fast serve: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        config = _config(args)
    except ServeConfigError as exc:
        print(f"univl-fast serve: {exc}", file=sys.stderr)
        return 2
    metrics_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # before prometheus_client is imported: every worker writes its values there
        metrics_dir = tempfile.mkdtemp(prefix="univl-fast-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return _serve(args, config)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(args: argparse.Namespace, config: ServeConfig) -> int:
    from univl_fast.serve.app import WARMUP_QUERY, create_app
    from univl_fast.serve.metrics import mark_worker_dead
    from univl_fast.serve.prefork import (
        Prefork,
        bind_socket,
        engine_uses_gpu,
        run_in_process,
        url_of,
    )

    if args.workers > 1:
        gpu, why = engine_uses_gpu(args.backend)
        if gpu:  # CUDA does not survive a fork: each worker loads its own engine after it
            return _serve_load_after_fork(args, config, why)
    # The engine's own queue bound (queries waiting for its batcher) stays at its default; the
    # service bounds admitted requests itself (--max-queue). Either being full answers 429.
    engine = load_engine(args, "serve")
    if engine is None:
        return 1
    with engine:
        app = create_app(engine, config)
        engine.search([WARMUP_QUERY], k=1)  # sessions and index warm before the fork
        try:
            sock = bind_socket(args.host, args.port)
        except OSError as exc:
            print(f"univl-fast serve: {exc}", file=sys.stderr)
            return 1
        state = app.state.serve

        def draining() -> None:
            state.draining = True

        _log_listening(url_of(sock), args.workers)
        if args.workers == 1:
            return run_in_process(app, sock, config.graceful_timeout_s, draining)
        return Prefork(
            app, sock, args.workers, config.graceful_timeout_s, draining, mark_worker_dead
        ).run()


def _serve_load_after_fork(args: argparse.Namespace, config: ServeConfig, why: str) -> int:
    """--workers N with a GPU backend: the parent binds and supervises; each worker loads and
    warms its own engine after the fork (N copies of the engine on the GPU)."""
    from univl_fast.serve.app import WARMUP_QUERY, create_app
    from univl_fast.serve.metrics import mark_worker_dead
    from univl_fast.serve.prefork import Prefork, bind_socket, url_of

    def make_app():
        engine = open_engine(args)
        app = create_app(engine, config)
        engine.search([WARMUP_QUERY], k=1)
        state = app.state.serve

        def draining() -> None:
            state.draining = True

        return app, draining

    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"univl-fast serve: {exc}", file=sys.stderr)
        return 1
    log.info(
        "univl-fast serve: GPU backend (%s): each of the %d workers loads its own engine after "
        "the fork",
        why,
        args.workers,
    )
    _log_listening(url_of(sock), args.workers)
    return Prefork(
        None,
        sock,
        args.workers,
        config.graceful_timeout_s,
        lambda: None,
        mark_worker_dead,
        make_app=make_app,
    ).run()


def _log_listening(url: str, workers: int) -> None:
    log.info(
        "univl-fast serve: listening on %s with %d worker(s); search page %s/ ; API docs %s/docs",
        url,
        workers,
        url,
        url,
    )
