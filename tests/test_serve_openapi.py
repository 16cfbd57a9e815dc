"""``/openapi.json`` tells the truth: every route is walked through a real uvicorn with valid and
invalid requests (wrong key, wrong Host, wrong Content-Type, bad JSON, wrong types, limits,
unknown things, a full worker, passed deadlines, a trickled body, a broken image store), and
each answer's status, content type and body are checked against the document (jsonschema,
OpenAPI 3.1 = JSON Schema 2020-12). Every route of the document is visited, and every error
body has the one shape."""

from __future__ import annotations

import base64
import json
import re
import socket
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import univl_fast
from tests.engine_helpers import PRECISION
from tests.serve_helpers import host_port, png_bytes, raw_request, read_response, thread_server
from univl_fast.serve import ServeConfig, create_app

jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")

pytest_plugins = ["tests.engine_fixtures"]

KEY = "k-openapi"
AUTH = {"authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "content-type": "application/json"}


@dataclass
class Answer:
    status: int
    ctype: str
    body: bytes


def _of(r: httpx.Response) -> Answer:
    return Answer(r.status_code, r.headers.get("content-type", ""), r.content)


def _raw_answer(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(re.match(rb"HTTP/1\.[01] (\d{3})", head).group(1))
    m = re.search(rb"(?im)^content-type:\s*([^\r\n]+)", head)
    return Answer(status, m.group(1).decode() if m else "", body)


class Walker:
    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.seen: set[tuple[str, str, int]] = set()

    def check(self, method: str, template: str, got: Answer) -> Answer:
        op = self.spec["paths"][template][method.lower()]
        doc = op["responses"].get(str(got.status))
        assert doc is not None, (
            f"{method} {template} answered {got.status}, not in the document "
            f"({sorted(op['responses'])}): {got.body[:300]!r}"
        )
        ctype = got.ctype.split(";")[0].strip()
        content = doc.get("content", {})
        media = content.get(ctype) or next(
            (v for k, v in content.items() if k.endswith("/*") and ctype.startswith(k[:-1])), None
        )
        assert media is not None, f"{method} {template} {got.status}: {ctype} not in {content}"
        if ctype == "application/json":
            schema = {**media["schema"], "components": self.spec["components"]}
            jsonschema.validate(json.loads(got.body), schema, cls=jsonschema.Draft202012Validator)
        if got.status != 200:
            assert set(json.loads(got.body)) == {"error"}, got.body[:300]
        self.seen.add((method, template, got.status))
        return got


@pytest.fixture(scope="module")
def engine(tiny_engine, flat_index):
    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION)
    yield eng
    eng.close()


def test_every_answer_of_every_route_is_documented(engine, synth_tiny, synth_tiny_dataset):
    cfg = ServeConfig(
        api_key=KEY,
        data_dir=str(synth_tiny),
        max_body_bytes=8192,
        max_inputs=4,
        max_query_chars=200,
        max_image_pixels=10_000,
        max_decoded_pixels=10_000,
    )
    app = create_app(engine, cfg)
    state = app.state.serve
    image_doc = synth_tiny_dataset.image_docs()[0].doc_id
    text_doc = synth_tiny_dataset.text_docs()[0].doc_id
    with thread_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        spec = c.get("/openapi.json").json()
        w = Walker(spec)
        w.check("GET", "/health", _of(c.get("/health")))
        w.check("GET", "/ready", _of(c.get("/ready")))
        state.ready = False
        try:
            w.check("GET", "/ready", _of(c.get("/ready")))
        finally:
            state.ready = True
        for template in ("/info", "/metrics", "/v1/models"):
            w.check("GET", template, _of(c.get(template, headers=AUTH)))
            w.check("GET", template, _of(c.get(template)))  # 401
            w.check("GET", template, _of(c.get(template, headers={**AUTH, "host": "evil.test"})))
        model = c.get("/v1/models", headers=AUTH).json()["data"][0]["id"]
        w.check("GET", "/v1/models/{model}", _of(c.get(f"/v1/models/{model}", headers=AUTH)))
        w.check("GET", "/v1/models/{model}", _of(c.get("/v1/models/gpt-x", headers=AUTH)))
        w.check("GET", "/v1/models/{model}", _of(c.get(f"/v1/models/{model}")))

        img = "/v1/docs/{doc_id}/image"
        for doc_id in (image_doc, text_doc, "no-such-doc"):  # 200, 404, 404
            w.check("GET", img, _of(c.get(f"/v1/docs/{doc_id}/image", headers=AUTH)))
        w.check("GET", img, _of(c.get(f"/v1/docs/{image_doc}/image")))

        search = [
            (b'{"queries": ["a red boat"], "k": 3}', JSON),
            (b'{"queries": ["a", ', JSON),  # 400
            (b'{"queries": "one string"}', JSON),  # 422
            (b'{"queries": ["a"], "k": 1000}', JSON),  # 422 limit
            (json.dumps({"queries": ["x" * 9000]}).encode(), JSON),  # 413
            (b'{"queries": ["a"]}', {**AUTH, "content-type": "text/plain"}),  # 415
            (b'{"queries": ["a"]}', {"content-type": "application/json"}),  # 401
            (b'{"queries": ["a"]}', {**JSON, "host": "evil.test"}),  # 400
        ]
        for body, headers in search:
            w.check("POST", "/v1/search", _of(c.post("/v1/search", content=body, headers=headers)))

        tiny = base64.b64encode(png_bytes(50)).decode()
        big = base64.b64encode(png_bytes(200)).decode()
        embeddings = [
            {"input": ["a", "b"], "model": model, "user": "u", "dimensions": engine.dim},
            {"input": [{"image": tiny, "caption": "red"}], "encoding_format": "base64"},
            {"input": []},  # 400
            {"input": "a", "dimensions": 3},  # 400
            {"input": [[1, 2]]},  # 400
            {"input": [{"image": big, "caption": "too many pixels"}]},  # 400
            {"input": "a", "model": "text-embedding-3-small"},  # 404
            {"input": [{"image": tiny, "caption": "c" * 300}]},  # 422 caption
            {"input": ["a"] * 5},  # 422
            {"input": 5},  # 422
        ]
        for body in embeddings:
            w.check(
                "POST", "/v1/embeddings", _of(c.post("/v1/embeddings", json=body, headers=AUTH))
            )
        files = [("image", ("a.png", png_bytes(50), "image/png"))]
        r = c.post("/v1/embeddings", files=files, data={"caption": ["red"]}, headers=AUTH)
        assert w.check("POST", "/v1/embeddings", _of(r)).status == 200
        r = c.post("/v1/embeddings", content=b"input=a", headers={**AUTH, "content-type": "x"})
        assert w.check("POST", "/v1/embeddings", _of(r)).status == 415

        # a full worker: 429 on every route that takes a slot
        state.admission.admitted = cfg.max_queue
        try:
            r = c.post("/v1/search", json={"queries": ["a"]}, headers=AUTH)
            assert w.check("POST", "/v1/search", _of(r)).status == 429
            r = c.post("/v1/embeddings", json={"input": "a"}, headers=AUTH)
            assert w.check("POST", "/v1/embeddings", _of(r)).status == 429
            r = c.get(f"/v1/docs/{image_doc}/image", headers=AUTH)
            assert w.check("GET", img, _of(r)).status == 429
        finally:
            state.admission.admitted = 0

        # a broken image store: 500
        docs_image = state.docs.image
        state.docs.image = lambda _doc_id: (_ for _ in ()).throw(OSError("disk on fire"))
        try:
            r = c.get(f"/v1/docs/{image_doc}/image", headers=AUTH)
            assert w.check("GET", img, _of(r)).status == 500
        finally:
            state.docs.image = docs_image

    # deadlines: 504 everywhere work runs, and 408 for a trickled body
    cfg = ServeConfig(data_dir=str(synth_tiny), request_timeout_s=1e-6, body_timeout_s=0.5)
    with thread_server(create_app(engine, cfg)) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/search", json={"queries": ["a"]})
        assert w.check("POST", "/v1/search", _of(r)).status == 504
        r = c.post("/v1/embeddings", json={"input": "a"})
        assert w.check("POST", "/v1/embeddings", _of(r)).status == 504
        assert w.check("GET", img, _of(c.get(f"/v1/docs/{image_doc}/image"))).status == 504
        body = b'{"queries": ["a"]}'
        head = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        with socket.create_connection(host_port(url), timeout=10) as s:
            s.sendall(raw_request(url, "POST", "/v1/search", head, body[:3]))
            status, raw = read_response(s, 10)
        assert w.check("POST", "/v1/search", _raw_answer(raw)).status == 408

    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    walked = {(m, p) for m, p, _ in w.seen}
    assert documented == walked, documented ^ walked
    statuses = {s for *_, s in w.seen}
    assert {200, 400, 401, 404, 408, 413, 415, 422, 429, 500, 503, 504} <= statuses
    # one error schema, and /metrics says text/plain
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    metrics_200 = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics_200) == {"text/plain"}
