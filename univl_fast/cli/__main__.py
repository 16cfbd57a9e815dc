"""``python -m univl_fast.cli``: the ``univl-fast`` console script."""

import sys

from univl_fast.cli import main

sys.exit(main())
