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
    code = f"""
    import io
    import numpy as np
    from PIL import Image
    import univl_fast.runtime as rt
    from univl_fast.runtime import Encoder

    for precision in ("int8", "fp32"):
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
