"""``python -m univl_fast.export`` (same as ``univl-fast export``)."""

import sys

from univl_fast.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
