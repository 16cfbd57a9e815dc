"""TensorRT plans are built and verified on a GPU host without torch (issue 22 item 8).

``add_plans_to_engine`` / ``build_verified_plans`` run with torch blocked in a subprocess;
TensorRT itself is faked (a "plan" is the standard-op fp32 graph, run by ONNX Runtime), since
what is under test is that nothing on that path imports torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.engine_dirs import engine_copy
from tests.test_torch_free import BLOCKER

FAKE_TRT = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path
    import univl_fast.runtime.backends as backends
    import univl_fast.export.tensorrt as trt_build

    def build_tower_plan(root, src, tower, context_length, image_size, max_batch, opt_batch):
        rel = f"{tower}_fp16.plan"
        shutil.copyfile(Path(root) / src, Path(root) / rel)
        return rel, {"kind": "tensorrt-plan", "tower": tower, "input": "x", "output": "y"}

    trt_build.build_tower_plan = build_tower_plan
    trt_build.require_tensorrt = lambda: None
    backends.open_tower = lambda path, backend, io_names=None, threads=None: backends.OrtTower(path)
    m = trt_build.add_plans_to_engine(sys.argv[1])
    bad = [k for k in sys.modules if k.split(".")[0] in ("torch", "open_clip", "torchvision")]
    print(json.dumps({"plans": m["tensorrt_plans"], "parity": m["parity"]["text"]
        ["tensorrt-fp16"], "combined": m["parity"]["combined"]["tensorrt-fp16"], "torch": bad}))
    """
)


def test_add_plans_to_engine_without_torch(tiny_engine, tmp_path):
    engine = engine_copy(tiny_engine, tmp_path / "engine")
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER + FAKE_TRT, str(engine)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch"] == []
    assert set(out["plans"]) == {"text", "image"}
    assert out["parity"]["passed"] and out["combined"]["passed"], out
    assert out["parity"]["measured_on"][0]["runtime"] == "tensorrt"
