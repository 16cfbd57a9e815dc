#!/usr/bin/env bash
# Set up (if needed) and run the whole flow on the built-in benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/univl-fast demo "$@"
