"""Abuse cases of the service, each through a real uvicorn on 127.0.0.1 (bounded counts and
times): unbounded captions, a tokenizer fed one huge word, the document-image route (internals in
its 500, no admission or deadline, public caching, sniffing), the API key file (permission
error, directory, byte-order mark, readable by others), clients trickling their bodies, foreign
Host headers and cross-site content types, and decoded image pixels in flight."""

from __future__ import annotations

import base64
import json
import logging
import random
import socket
import string
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ftfy
import httpx
import pytest

import univl_fast
from tests.engine_helpers import PRECISION
from tests.serve_helpers import (
    REPO,
    host_port,
    png_bytes,
    raw_request,
    read_response,
    thread_server,
)
from univl_fast.serve import ServeConfig, create_app
from univl_fast.serve.config import ServeConfigError, read_api_key_file

pytest_plugins = ["tests.engine_fixtures"]


@pytest.fixture(scope="module")
def engine(tiny_engine, flat_index):
    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION)
    yield eng
    eng.close()


# ---------------------------------------------------------------- captions and the tokenizer
def test_captions_are_bounded_like_queries(engine):
    cfg = ServeConfig(max_query_chars=100)
    png = png_bytes(32)
    long_caption = "word " * 100  # 500 characters
    with thread_server(create_app(engine, cfg)) as url, httpx.Client(base_url=url) as c:
        item = {"image": base64.b64encode(png).decode(), "caption": long_caption}
        r = c.post("/v1/embeddings", json={"input": [item]}, timeout=30)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["param"] == "input[0].caption" and "limit of 100" in err["message"]
        files = [("image", ("a.png", png, "image/png"))]
        r = c.post("/v1/embeddings", files=files, data={"caption": [long_caption]}, timeout=30)
        assert r.status_code == 422 and "limit of 100" in r.json()["error"]["message"]
        r = c.post("/v1/embeddings", files=files, data={"caption": ["short"]}, timeout=30)
        assert r.status_code == 200, r.text


def test_tokenizer_stops_early_on_one_huge_word(engine, monkeypatch):
    """A 2 MB single word: the tokenizer cleans and merges a bounded prefix only (the old one
    merged all 2 MB: quadratic, hours). Asserted on the work done, not on time (the timing is in
    bench/results/serve.md): ftfy sees at most 64 Ki characters and BPE at most a few thousand
    symbols. The ids equal those of the full merge on words short enough to merge whole."""
    tok = engine.encoder.tokenizer
    cls = type(tok)
    seen: dict[str, int] = {"ftfy": 0, "bpe": 0}
    fix_text = ftfy.fix_text

    def counted_fix(text, *a, **k):
        seen["ftfy"] = max(seen["ftfy"], len(text))
        return fix_text(text, *a, **k)

    def bounded(name):
        inner = getattr(cls, name)

        def run(self, arg, *a, **k):
            seen["bpe"] = max(seen["bpe"], len(arg))
            # fail fast instead of merging megabytes for hours
            assert len(arg) <= 100_000, f"{name} asked to merge {len(arg)} symbols"
            return inner(self, arg, *a, **k)

        return run

    monkeypatch.setattr("univl_fast.runtime.tokenizer.ftfy.fix_text", counted_fix)
    for name in ("_bpe", "_merge", "_merge_heap"):
        if hasattr(cls, name):
            monkeypatch.setattr(cls, name, bounded(name))
    rng = random.Random(7)
    word = "".join(rng.choices(string.ascii_lowercase, k=2_000_000))
    ids = tok.token_ids(word)
    assert len(ids) == tok.context_length and ids[0] == tok.sot_token_id
    assert ids[-1] == tok.eot_token_id
    assert seen["ftfy"] <= 65_536 and seen["bpe"] <= 4096, seen
    monkeypatch.undo()
    for alphabet in (string.ascii_lowercase, "ab", "a"):
        w = "".join(rng.choices(alphabet, k=1500))
        assert tok.token_ids(w) == [tok.sot_token_id, *tok.encode(w)[:75], tok.eot_token_id]


# ---------------------------------------------------------------- the document-image route
@pytest.fixture(scope="module")
def with_docs(engine, synth_tiny, synth_tiny_dataset):
    app = create_app(engine, ServeConfig(data_dir=str(synth_tiny)))
    doc = synth_tiny_dataset.image_docs()[0].doc_id
    with thread_server(app) as url:
        yield url, app, doc


def test_doc_image_headers(with_docs):
    url, _app, doc = with_docs
    r = httpx.get(f"{url}/v1/docs/{doc}/image", timeout=30)
    assert r.status_code == 200
    assert r.headers["cache-control"].startswith("private")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{url}/health", timeout=30).headers["x-content-type-options"] == "nosniff"


def test_doc_image_500_tells_no_internals(with_docs, caplog):
    url, app, doc = with_docs
    docs = app.state.serve.docs
    secret = str(Path(docs.dataset.root if hasattr(docs.dataset, "root") else "/srv") / "imgs.tsv")

    def broken(_doc_id):
        raise OSError(f"{secret}: line 7: truncated")

    real = docs.images.read_bytes
    docs.images.read_bytes = broken
    try:
        with caplog.at_level(logging.ERROR, logger="univl_fast.serve"):
            r = httpx.get(f"{url}/v1/docs/{doc}/image", timeout=30)
    finally:
        docs.images.read_bytes = real
    assert r.status_code == 500
    assert secret not in r.text and "truncated" not in r.text
    assert r.json()["error"]["message"] == f"the image of document {doc!r} could not be read"
    assert any(secret in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)


def test_doc_image_admission_and_deadline(engine, synth_tiny, synth_tiny_dataset):
    doc = synth_tiny_dataset.image_docs()[0].doc_id
    app = create_app(engine, ServeConfig(data_dir=str(synth_tiny), max_queue=2))
    with thread_server(app) as url:
        app.state.serve.admission.admitted = 2  # the worker is full
        try:
            r = httpx.get(f"{url}/v1/docs/{doc}/image", timeout=30)
        finally:
            app.state.serve.admission.admitted = 0
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert httpx.get(f"{url}/v1/docs/{doc}/image", timeout=30).status_code == 200
    cfg = ServeConfig(data_dir=str(synth_tiny), request_timeout_s=1e-6)
    with thread_server(create_app(engine, cfg)) as url:
        r = httpx.get(f"{url}/v1/docs/{doc}/image", timeout=30)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"


# ---------------------------------------------------------------- the API key file
def test_key_file_bom_directory_permission_and_mode(tmp_path, monkeypatch, caplog):
    bom = tmp_path / "bom"
    bom.write_bytes(b"\xef\xbb\xbfs3cret\r\n")
    bom.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="univl_fast.serve"):
        assert read_api_key_file(bom) == "s3cret"
    assert not caplog.records  # owner-only: no warning
    bom.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="univl_fast.serve"):
        assert read_api_key_file(bom) == "s3cret"
    assert any(
        "644" in rec.getMessage() and "chmod 600" in rec.getMessage() for rec in caplog.records
    )
    with pytest.raises(ServeConfigError, match="is a directory"):
        read_api_key_file(tmp_path)

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    # root reads any file whatever its mode: the refusal is simulated at the read
    monkeypatch.setattr(Path, "read_bytes", denied)
    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ServeConfigError, match="permission denied"):
        read_api_key_file(bom)


def test_cli_key_file_directory_is_a_clear_error(tmp_path):
    code = "from univl_fast.cli import main; import sys; sys.exit(main(sys.argv[1:]))"
    args = ["serve", "--engine", str(tmp_path), "--index", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--api-key-file", str(tmp_path)],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "is a directory" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- slow bodies
def test_trickling_bodies_hold_no_admission_slot(engine, queries):
    """4 clients trickle their bodies to a worker of max_queue=2: a normal request is still
    answered 200 (they used to hold every slot until body_timeout_s, and it got 429)."""
    cfg = ServeConfig(max_queue=2, body_timeout_s=20.0)
    body = json.dumps({"queries": [queries[0]], "k": 2}).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    with thread_server(create_app(engine, cfg)) as url:
        slow = [socket.create_connection(host_port(url), timeout=10) for _ in range(4)]
        try:
            for s in slow:
                s.sendall(raw_request(url, "POST", "/v1/search", head, body[:3]))
            time.sleep(0.3)  # their requests have arrived and wait for their bodies
            r = httpx.post(f"{url}/v1/search", content=body, headers=head, timeout=30)
            assert r.status_code == 200, r.text
            for s in slow:  # and the slow ones are served once their bodies are in
                s.sendall(body[3:])
                status, raw = read_response(s, 30)
                assert status == 200, raw[:300]
        finally:
            for s in slow:
                s.close()


def test_body_bytes_in_flight_are_bounded(engine, queries):
    """Bodies being read count against max_queue x max_body_bytes per worker: past it, 429."""
    cfg = ServeConfig(max_queue=1, max_body_bytes=2000, body_timeout_s=20.0)
    big = json.dumps({"queries": [queries[0][:40] + " " * 1900]}).encode()  # ~1960 bytes
    small = json.dumps({"queries": [queries[0]]}).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(big))}
    with thread_server(create_app(engine, cfg)) as url:
        with socket.create_connection(host_port(url), timeout=10) as holder:
            holder.sendall(raw_request(url, "POST", "/v1/search", head, big[:10]))
            time.sleep(0.3)
            r = httpx.post(
                f"{url}/v1/search", content=small, headers={"content-type": "application/json"}
            )
            assert r.status_code == 429 and "budget of 2000 bytes" in r.json()["error"]["message"]
            holder.sendall(big[10:])
            status, raw = read_response(holder, 30)
            assert status == 200, raw[:300]
        r = httpx.post(
            f"{url}/v1/search", content=small, headers={"content-type": "application/json"}
        )
        assert r.status_code == 200


# ---------------------------------------------------------------- cross-site
def test_host_allow_list_and_content_type(engine, queries):
    body = json.dumps({"queries": [queries[0]], "k": 2})
    with thread_server(create_app(engine, ServeConfig())) as url:
        before = engine.batcher_stats()["requests"]
        r = httpx.get(f"{url}/info", headers={"host": "attacker.example:80"}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "host_not_allowed"
        r = httpx.post(
            f"{url}/v1/search",
            content=body,
            headers={"host": "rebound.attacker.example", "content-type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 400
        # probes answer any Host; localhost names are allowed
        assert (
            httpx.get(f"{url}/health", headers={"host": "10.0.0.7"}, timeout=30).status_code == 200
        )
        port = host_port(url)[1]
        assert httpx.get(f"{url}/info", headers={"host": f"localhost:{port}"}).status_code == 200
        # a cross-site "simple" POST (text/plain, form) starts no work
        for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"content-type": ctype} if ctype else {}
            r = httpx.post(f"{url}/v1/search", content=body, headers=headers, timeout=30)
            assert r.status_code == 415, (ctype, r.text)
        assert engine.batcher_stats()["requests"] == before
        r = httpx.post(
            f"{url}/v1/search",
            content=body,
            headers={"content-type": "application/json; charset=utf-8"},
            timeout=30,
        )
        assert r.status_code == 200


def test_cli_allowed_hosts_default():
    from univl_fast.serve.cli import allowed_hosts

    assert allowed_hosts("127.0.0.1", None) == ("127.0.0.1", "localhost", "::1")
    assert allowed_hosts("10.1.2.3", None) == ("10.1.2.3", "localhost", "127.0.0.1", "::1")
    assert allowed_hosts("0.0.0.0", None) == ("*",)
    assert allowed_hosts("0.0.0.0", "search.example.org, 10.1.2.3") == (
        "search.example.org",
        "10.1.2.3",
    )


# ---------------------------------------------------------------- decoded pixels
def test_decoded_pixels_in_flight_are_bounded(engine):
    """6 concurrent uploads of a 100x100 image (10,000 pixels) to a worker whose budget is
    20,000 decoded pixels: at no time are more than 2 images' pixels being decoded."""
    side = 100
    cfg = ServeConfig(max_image_pixels=side * side, max_decoded_pixels=2 * side * side)
    app = create_app(engine, cfg)
    lock = threading.Lock()
    now = {"pixels": 0, "peak": 0, "calls": 0}
    real = engine.encode_image_docs

    def tracked(images, captions, on_error="raise"):
        with lock:
            now["pixels"] += side * side * len(images)
            now["peak"] = max(now["peak"], now["pixels"])
            now["calls"] += 1
        try:
            time.sleep(0.2)  # long enough for the requests to overlap
            return real(images, captions, on_error=on_error)
        finally:
            with lock:
                now["pixels"] -= side * side * len(images)

    engine.encode_image_docs = tracked
    try:
        item = {"image": base64.b64encode(png_bytes(side)).decode(), "caption": "blue"}
        with thread_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
            with ThreadPoolExecutor(6) as pool:
                answers = list(
                    pool.map(lambda _: c.post("/v1/embeddings", json={"input": [item]}), range(6))
                )
    finally:
        del engine.encode_image_docs
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    assert now["calls"] == 6 and now["peak"] <= 2 * side * side, now
