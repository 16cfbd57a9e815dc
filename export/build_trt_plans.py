"""Build TensorRT fp16 plans for an exported engine on a GPU host (see README.md).

python export/build_trt_plans.py ENGINE [--max-batch 64] [--opt-batch 16]

The plans are parsed from the engine's standard-op fp32 graphs (``tensorrt_graphs``), verified
against the engine's fp32 graphs on the built-in sample (raw outputs and the image-document
vector) and listed in the manifest with that parity; plans that miss it are not kept.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", help="engine dir written by python -m univl_fast.export")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--opt-batch", type=int, default=16)
    args = ap.parse_args()
    from univl_fast.export.tensorrt import PLAN_KEY, TensorRTUnavailable, add_plans_to_engine
    from univl_fast.runtime.manifest import EngineError

    try:
        manifest = add_plans_to_engine(args.engine, args.max_batch, args.opt_batch)
    except TensorRTUnavailable as exc:
        print(exc, file=sys.stderr)
        return 3
    except EngineError as exc:
        print(exc, file=sys.stderr)
        return 2
    for part in ("text", "image", "combined"):
        p = manifest["parity"][part][PLAN_KEY]
        print(
            f"{part:8s} passed={p['passed']} min cos {p['min_cosine']} max rel L2 {p['max_rel_l2']}"
        )
    if not manifest["tensorrt_plans"]:
        print("plans missed parity: not kept (see the parity above)", file=sys.stderr)
        return 1
    print(f"plans: {manifest['tensorrt_plans']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
