"""``univl-fast serve``'s endpoints through a real uvicorn on 127.0.0.1: search (same ranking as
the engine), embeddings (JSON, base64, multipart), probes, /info, /metrics, timing headers,
JSON access log, doc images and the page's HTML."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import time

import httpx
import numpy as np
import pytest
from PIL import Image

import univl_fast
from tests.engine_helpers import PRECISION, assert_same_ranking
from tests.serve_helpers import thread_server
from univl_fast.serve import ServeConfig, create_app

pytest_plugins = ["tests.engine_fixtures"]

MAX_PIXELS = 100_000  # small, so the test's 400x400 image is over it


@pytest.fixture(scope="module")
def plain(tiny_engine, flat_index):
    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION, batching=False)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def served(tiny_engine, flat_index, synth_tiny):
    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION)
    config = ServeConfig(data_dir=str(synth_tiny), max_image_pixels=MAX_PIXELS, access_log=True)
    app = create_app(eng, config)
    with thread_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, app
    eng.close()


@pytest.fixture(scope="module")
def client(served):
    return served[0]


def _png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_search_same_ranking_as_engine(client, plain, queries):
    qs = [queries[0], "   ", queries[1]]
    r = client.post("/v1/search", json={"queries": qs, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 5 and body["modality"] is None
    assert len(body["results"]) == 3
    assert body["results"][1] == {"hits": [], "error": None}
    ref = plain.search([queries[0], queries[1]], k=20)
    for got, expect, q in zip([body["results"][0], body["results"][2]], ref, qs[::2], strict=True):
        assert got["error"] is None
        hits = [univl_fast.Hit(h["doc_id"], h["modality"], h["score"]) for h in got["hits"]]
        assert_same_ranking(hits, expect, 5, q)


def test_search_modality_and_text(client, synth_tiny_dataset, queries):
    captions = {d.doc_id: d.caption for d in synth_tiny_dataset.image_docs()}
    r = client.post(
        "/v1/search",
        json={"queries": [queries[2]], "k": 4, "modality": "image", "include_text": True},
    )
    assert r.status_code == 200, r.text
    hits = r.json()["results"][0]["hits"]
    assert len(hits) == 4
    assert {h["modality"] for h in hits} == {"image"}
    for h in hits:
        assert h["text"] == " ".join(captions[h["doc_id"]].split())
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_search_bad_query_reported_per_query(client, queries):
    # a lone surrogate is valid JSON but not valid text: that query fails, the other is answered
    raw = '{"queries": ["\\ud800", ' + json.dumps(queries[0]) + '], "k": 3}'
    r = client.post("/v1/search", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["hits"] == [] and first["error"]
    assert second["error"] is None and len(second["hits"]) == 3


def test_embeddings_text(client, plain):
    texts = ["a red lighthouse on a cliff", "the river delta in spring"]
    model = client.get("/v1/models").json()["data"][0]["id"]
    r = client.post("/v1/embeddings", json={"input": texts, "model": model, "user": "u-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == model and "errors" not in body
    assert [d["index"] for d in body["data"]] == [0, 1]
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    ref = plain.encode_text_docs(texts)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["prompt_tokens"] > len(texts)  # sot + words + eot per text
    timing = r.headers["server-timing"]
    assert float(timing.split("encode;dur=")[1].split(",")[0]) > 0

    r = client.post("/v1/embeddings", json={"input": texts[0], "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    (item,) = r.json()["data"]
    vec = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, ref[0], atol=1e-6)


def test_embeddings_images_json_and_multipart(client, plain, synth_tiny_dataset):
    doc = synth_tiny_dataset.image_docs()[0]
    png = synth_tiny_dataset.images.read_bytes(doc.doc_id)
    ref = plain.encode_image_docs([png], [doc.caption])[0]
    big = _png((400, 400), (10, 200, 30))  # 160,000 pixels > MAX_PIXELS
    good = {"image": base64.b64encode(png).decode(), "caption": doc.caption}
    r = client.post("/v1/embeddings", json={"input": [good, "a text item"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    np.testing.assert_allclose(body["data"][0]["embedding"], ref, atol=1e-5)
    np.testing.assert_allclose(
        body["data"][1]["embedding"], plain.encode_text_docs(["a text item"])[0], atol=1e-5
    )
    # a bad item fails the whole request, naming it (clients pair vectors by position)
    for bad, needle in (
        ({"image": base64.b64encode(b"not an image").decode(), "caption": "x"}, "input[1]"),
        ({"image": base64.b64encode(big).decode(), "caption": "too big"}, "160000"),
    ):
        r = client.post("/v1/embeddings", json={"input": [good, bad, "text"]})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "input[1]" and needle in err["message"], err
        assert err["type"] == "invalid_request_error" and "data" not in r.json()

    files = [("image", ("a.png", png, "image/png")), ("image", ("b.png", png, "image/png"))]
    data = {"caption": [doc.caption, doc.caption]}
    r = client.post("/v1/embeddings", files=files, data=data)
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    assert got.shape == (2, ref.shape[0])
    np.testing.assert_allclose(got, np.stack([ref, ref]), atol=1e-5)

    r = client.post("/v1/embeddings", files=files, data={"caption": ["only one"]})
    assert r.status_code == 422
    assert "2 images but 1 captions" in r.json()["error"]["message"]


def test_probes_info_docs(client, flat_index, plain):
    assert client.get("/health").json()["status"] == "ok"
    r = client.get("/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    info = client.get("/info").json()
    manifest = json.loads((flat_index / "manifest.json").read_text())
    assert info["precision"] == PRECISION
    assert info["backend"] == plain.encoder.backend and info["backend"].startswith("onnxruntime")
    assert info["model"] and info["dim"] == plain.dim
    # which towers answer: the engine's own picks, image included
    assert info["text_runtime"] == plain.encoder.text_runtime
    assert info["image_runtime"] == plain.encoder.image_runtime
    assert info["index"]["factory"] == manifest["factory"] == "Flat"
    assert info["index"]["recall"] == manifest["tuning"]["recall_at_k"] == 1.0
    assert info["index"]["ntotal"] == manifest["ntotal"]
    assert info["versions"]["univl_fast"] == univl_fast.__version__
    assert info["limits"]["max_image_pixels"] == MAX_PIXELS
    assert "api_key" not in info["limits"] and info["limits"]["auth"] is False
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in docs.text
    assert "https://" not in docs.text  # no CDN: the packaged Swagger UI
    assert client.get("/redoc").status_code == 404
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/v1/search", "/v1/embeddings", "/health", "/ready", "/info", "/metrics"} <= set(paths)
    # the engine routes parse their bodies themselves: their request schemas are documented and
    # every $ref in the document resolves
    body = paths["/v1/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/SearchRequest"}
    schemas = spec["components"]["schemas"]
    assert set(schemas["SearchRequest"]["properties"]) == {
        "queries",
        "k",
        "modality",
        "include_text",
    }
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(spec))
    assert "EmbeddingsRequest" in refs and "ImageInput" in refs
    assert set(refs) <= set(schemas), set(refs) - set(schemas)


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


def test_metrics_count_requests_and_stages(client, queries):
    before = client.get("/metrics").text
    n200 = _metric(before, "univl_fast_http_requests_total", route="/v1/search", status="200")
    n_enc = _metric(before, "univl_fast_stage_seconds_count", stage="encode")
    for q in queries[:3]:
        assert client.post("/v1/search", json={"queries": [q]}).status_code == 200
    assert client.post("/v1/search", json={"queries": "not a list"}).status_code == 422
    text = client.get("/metrics").text
    assert _metric(text, "univl_fast_http_requests_total", route="/v1/search", status="200") == (
        n200 + 3
    )
    assert _metric(text, "univl_fast_http_requests_total", route="/v1/search", status="422") >= 1
    assert _metric(text, "univl_fast_stage_seconds_count", stage="encode") >= n_enc + 1
    assert _metric(text, "univl_fast_stage_seconds_count", stage="search") >= 1
    assert _metric(text, "univl_fast_stage_seconds_count", stage="queue") >= 3
    assert _metric(text, "univl_fast_batch_queries_count") >= 1
    assert "univl_fast_queue_depth 0.0" in text
    assert _metric(text, "univl_fast_http_request_seconds_count", route="/v1/search") >= 4


def test_timing_headers_and_access_log(client, queries, caplog):
    def logged(rid: str) -> list[dict]:
        lines = [json.loads(rec.getMessage()) for rec in caplog.records]
        return [x for x in lines if x["request_id"] == rid]

    with caplog.at_level(logging.INFO, logger="univl_fast.serve.access"):
        r = client.post("/v1/search", json={"queries": [queries[3]], "k": 3})
        rid = r.headers["x-request-id"]
        deadline = time.monotonic() + 10  # the line is written once the answer has gone out
        while not logged(rid) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert r.status_code == 200
    timing = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
    assert set(timing) == {"queue", "encode", "search", "total"}
    t = {k: float(v) for k, v in timing.items()}
    assert t["encode"] > 0 and t["search"] > 0 and t["queue"] >= 0
    assert t["total"] >= t["encode"] + t["search"]
    (line,) = logged(rid)
    assert line["path"] == "/v1/search" and line["method"] == "POST" and line["status"] == 200
    assert line["ms"] > 0 and line["encode_ms"] > 0 and line["bytes_in"] > 0


def test_doc_image_and_page(client, synth_tiny_dataset):
    doc = synth_tiny_dataset.image_docs()[5]
    r = client.get(f"/v1/docs/{doc.doc_id}/image")
    assert r.status_code == 200
    assert r.content == synth_tiny_dataset.images.read_bytes(doc.doc_id)
    assert r.headers["content-type"].startswith("image/")
    Image.open(io.BytesIO(r.content)).verify()
    text_doc = synth_tiny_dataset.text_docs()[0]
    assert client.get(f"/v1/docs/{text_doc.doc_id}/image").status_code == 404
    assert client.get("/v1/docs/no-such-doc/image").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'id="q"' in html and 'id="modality"' in html and "/v1/search" in html
    assert 'data-docs="1"' in html
    # self-contained: no script, style or image from elsewhere
    assert "<script src" not in html and "https://" not in html and "<link" not in html


def test_include_text_needs_data(tiny_engine, flat_index, queries):
    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION, batching=False)
    with eng, thread_server(create_app(eng, ServeConfig())) as url:
        r = httpx.post(
            f"{url}/v1/search", json={"queries": [queries[0]], "include_text": True}, timeout=30
        )
        assert r.status_code == 422 and "--data" in r.text
        assert httpx.get(f"{url}/v1/docs/x/image", timeout=30).status_code == 404
        # the page knows: it asks for no snippets and shows no thumbnails
        assert 'data-docs="0"' in httpx.get(f"{url}/", timeout=30).text


def test_accepted_connections_turn_nagle_off():
    """The listening socket says TCP, so asyncio (and so uvicorn) sets TCP_NODELAY on every
    accepted connection; without it a keep-alive response's body waits ~40 ms for the client's
    delayed ACK of its headers."""
    import asyncio
    import socket

    from univl_fast.serve.prefork import bind_socket

    sock = bind_socket("127.0.0.1", 0)

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                s = transport.get_extra_info("socket")
                got.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await loop.create_server(Probe, sock=sock)
        async with server:
            _reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(got, 10)
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay()) == 1
