"""Per-stage profile of the native int8 towers (issue 14): where a ViT-B-32 image batch and a
batch of ~20-token queries spend their time, and the GMAC/s each GEMM reaches.

    .venv/bin/python bench/profile_towers.py --batch 16 --reps 5 --threads 2

Random open_clip weights (they cost what trained ones do). Timed by the team's member 0 with
``univl_fast._C.tower_profile_enable``: "work" until it reaches each stage's barrier, "wait"
at it (imbalance + the barrier). On a shared machine read the shares and the GEMM rates
relative to each other, not the absolute figures.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _towers(model: str, threads: int):
    import open_clip

    from univl_fast.export import native_image, native_text
    from univl_fast.runtime.native_image import NativeImageTower
    from univl_fast.runtime.native_text import NativeTextTower

    clip = open_clip.create_model(model).eval()
    image = NativeImageTower(native_image.to_npz_bytes(*native_image.extract(clip)), threads)
    text = NativeTextTower(native_text.to_npz_bytes(*native_text.extract(clip)), threads)
    return image, text


def profile(run, x, reps: int) -> tuple[float, int, dict]:
    from univl_fast import _C

    run(x)  # warm-up
    _C.tower_profile_enable(True)
    start = time.perf_counter()
    for _ in range(reps):
        run(x)
    wall = time.perf_counter() - start
    calls, stages = _C.tower_profile_read()
    _C.tower_profile_enable(False)
    return wall, calls, stages


def table(title: str, wall: float, calls: int, stages: dict, items: int, unit: str) -> str:
    total = sum(w + s for w, s, _ in stages.values())
    lines = [
        f"### {title}: {items * calls / wall:.1f} {unit}/s ({1e3 * wall / calls:.1f} ms/call)",
        "",
        "| stage | share % | work ms/call | wait ms/call | GMAC/call | GMAC/s (work+wait) |",
        "|---|---|---|---|---|---|",
    ]
    for name, (work, wait, macs) in stages.items():
        rate = f"{macs / (work + wait) / 1e9:.0f}" if macs and work + wait > 0 else ""
        lines.append(
            f"| {name} | {100 * (work + wait) / total:.1f} | {1e3 * work / calls:.2f} "
            f"| {1e3 * wait / calls:.2f} | {macs / calls / 1e9:.3f} | {rate} |"
        )
    lines.append(f"| (timed total) | 100 | {1e3 * total / calls:.1f} ms/call | | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=16, help="images per call")
    ap.add_argument("--queries", type=int, default=64, help="queries per text call")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    image, text = _towers(args.model, args.threads)
    s = image.image_size
    px = np.random.default_rng(0).standard_normal((args.batch, 3, s, s)).astype(np.float32)
    print(f"load before {os.getloadavg()}, isa {image.isa}, {args.threads} threads\n")
    wall, calls, stages = profile(image.run, px, args.reps)
    print(table(f"image, batch {args.batch}", wall, calls, stages, args.batch, "images"))
    ids = np.zeros((args.queries, 77), dtype=np.int64)
    ids[:, 0], ids[:, 1:20], ids[:, 20] = 49406, 320, 49407  # ~20-token queries
    wall, calls, stages = profile(text.run, ids, args.reps * 4)
    print()
    print(table(f"text, {args.queries} queries of 21 tokens", wall, calls, stages, 64, "queries"))
    print(f"\nload after {os.getloadavg()}")


if __name__ == "__main__":
    main()
