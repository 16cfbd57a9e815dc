"""``python -m univl_fast.data.validate DIR``: check a dataset dir and print what was found.

Exit status 0 when the dataset is usable (warnings allowed), 1 when it has errors.
"""

from __future__ import annotations

import argparse
import sys

from univl_fast.data.errors import DataFormatError
from univl_fast.data.layout import DatasetDir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m univl_fast.data.validate", description=__doc__)
    p.add_argument("path", help="dataset directory (UniVL-DR layout)")
    p.add_argument(
        "--images",
        default="sample",
        help="images to decode: none | sample (64 spread over the store) | all | a number",
    )
    args = p.parse_args(argv)
    check = args.images if args.images in ("none", "sample", "all") else int(args.images)
    try:
        report = DatasetDir(args.path).validate(check_images=check)
    except DataFormatError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
