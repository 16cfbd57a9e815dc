"""``univl-fast synth``: write the built-in synthetic benchmark in the dataset layout."""

from __future__ import annotations

import argparse
import sys
import time

from univl_fast.data.layout import DatasetDir
from univl_fast.data.synth import SCALES, generate, read_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument(
        "--scale",
        default="small",
        choices=list(SCALES),
        help="tiny (tests) | small (demo, results) | medium (10x small) | paper "
        "(389,750 images, 787,697 texts)",
    )
    p.add_argument("--seed", type=int, default=0, help="same scale + seed -> identical files")
    p.add_argument(
        "--force", action="store_true", help="overwrite the dataset files of a non-empty directory"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that draw the pictures (default: all cores for medium/paper)",
    )
    p.add_argument("--image-size", type=int, default=64, help="picture side in pixels")
    p.add_argument(
        "--validate",
        action="store_true",
        help="read the result back through the data layer and report",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        out = generate(
            args.out,
            scale=args.scale,
            seed=args.seed,
            progress=not args.quiet,
            force=args.force,
            workers=args.workers,
            image_size=args.image_size,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"univl-fast synth: {exc}", file=sys.stderr)
        return 2
    stats = read_config(out)["stats"]
    print(
        f"{out}: {stats['entities']} entities, {stats['images']} images, {stats['texts']} "
        f"texts; queries train/dev/test = {stats['train']['queries']}/"
        f"{stats['dev']['queries']}/{stats['test']['queries']} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    if args.validate:
        report = DatasetDir(out).validate(check_images="sample")
        print(report.summary())
        return 0 if report.ok else 1
    return 0
