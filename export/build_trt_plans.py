"""Build TensorRT fp16 plans for an exported engine on a GPU host (see README.md).

python export/build_trt_plans.py ENGINE [--max-batch 64] [--opt-batch 16]
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
    from univl_fast.export.tensorrt import TensorRTUnavailable, add_plans_to_engine

    try:
        manifest = add_plans_to_engine(args.engine, args.max_batch, args.opt_batch)
    except TensorRTUnavailable as exc:
        print(exc, file=sys.stderr)
        return 3
    print(f"plans: {manifest['tensorrt_plans']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
