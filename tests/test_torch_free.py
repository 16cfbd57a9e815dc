"""The serving path never imports torch or open_clip: proven in a subprocess that blocks them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKER = textwrap.dedent(
    """
    import sys, importlib.abc

    class Block(importlib.abc.MetaPathFinder):
        BLOCKED = ("torch", "open_clip", "torchvision")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError(f"blocked import of {name} on the torch-free path")
            return None

    sys.meta_path.insert(0, Block())
    """
)


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(Path(__file__).resolve().parents[1]),
    )


def test_blocker_really_blocks():
    proc = run_blocked("import torch")
    assert proc.returncode != 0 and "blocked import of torch" in proc.stderr


def test_encoder_runs_without_torch(tiny_engine):
    """Every precision this host serves (int8 where its parity passed here; otherwise the
    fp32 fallback, asserted) encodes with torch blocked."""
    from tests.host_routes import assert_int8_fallback, int8_route

    precisions = ["fp32"]
    if int8_route(tiny_engine).verified:
        precisions.insert(0, "int8")
    else:
        assert_int8_fallback(tiny_engine)
    code = f"""
    import io
    import numpy as np
    from PIL import Image
    import univl_fast.runtime as rt
    from univl_fast.runtime import Encoder

    assert Encoder({str(tiny_engine)!r}).precision == {precisions[0]!r}
    for precision in {tuple(precisions)!r}:
        enc = Encoder({str(tiny_engine)!r}, precision=precision)
        q = enc.encode_queries(["what color is the roof", "", "x " * 200])
        t = enc.encode_text_docs(["a text document", "another one"])
        img = Image.fromarray(np.full((40, 70, 3), 120, np.uint8))
        buf = io.BytesIO(); img.save(buf, format="PNG")
        d = enc.encode_image_docs([img, buf.getvalue()], ["a caption", ""])
        assert q.shape == (3, enc.dim) and t.shape == (2, enc.dim) and d.shape == (2, enc.dim)
        assert np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "torchvision")]
    assert not bad, bad
    print("OK", len(enc.manifest_sha256))
    """
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK 64" in proc.stdout


def test_runtime_modules_do_not_mention_torch():
    """Static check: no module of the runtime imports torch/open_clip, even lazily."""
    root = Path(__file__).resolve().parents[1] / "univl_fast" / "runtime"
    for path in root.glob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                assert "torch" not in stripped and "open_clip" not in stripped, (path, line)


def test_serve_runs_without_torch(tiny_engine, tmp_path):
    """The HTTP service (every univl_fast.serve module, a real uvicorn, a search and an
    embedding) with torch blocked. The index is built in the blocked process too."""
    code = f"""
    import threading, time
    import httpx, numpy as np, uvicorn
    import univl_fast
    from univl_fast.index import build_index
    from univl_fast.runtime import Encoder
    import univl_fast.serve.app, univl_fast.serve.cli, univl_fast.serve.docs
    import univl_fast.serve.prefork, univl_fast.serve.page
    from univl_fast.serve import ServeConfig, create_app
    from univl_fast.serve.prefork import bind_socket, url_of

    enc = Encoder({str(tiny_engine)!r})
    texts = ["a red lighthouse", "a green field", "snow on a mountain", "a city at night"]
    vecs = enc.encode_text_docs(texts)
    build_index(vecs, [f"d{{i}}" for i in range(4)], ["text"] * 4, factory="Flat",
                engine_sha256=enc.manifest_sha256, progress=False).save({str(tmp_path / "idx")!r})
    eng = univl_fast.load({str(tiny_engine)!r}, index={str(tmp_path / "idx")!r})
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(eng, ServeConfig()), log_config=None))
    th = threading.Thread(target=server.run, kwargs={{"sockets": [sock]}}, daemon=True)
    th.start()
    url = url_of(sock)
    for _ in range(600):
        if server.started and httpx.get(url + "/ready").status_code == 200:
            break
        time.sleep(0.05)
    r = httpx.post(url + "/v1/search", json={{"queries": ["lighthouse"], "k": 2}}, timeout=30)
    assert r.status_code == 200 and len(r.json()["results"][0]["hits"]) == 2, r.text
    r = httpx.post(url + "/v1/embeddings", json={{"input": texts[:1]}}, timeout=30)
    assert np.allclose(r.json()["data"][0]["embedding"], vecs[0], atol=1e-5)
    server.should_exit = True
    th.join(30)
    eng.close()
    bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "torchvision")]
    assert not bad, bad
    print("SERVE OK")
    """
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SERVE OK" in proc.stdout


def test_serve_modules_do_not_mention_torch():
    root = Path(__file__).resolve().parents[1] / "univl_fast" / "serve"
    files = list(root.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                assert "torch" not in stripped and "open_clip" not in stripped, (path, line)
