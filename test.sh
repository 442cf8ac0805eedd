#!/usr/bin/env bash
# Set up (once) and run the whole test suite: lint, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-venv.sh
export PREFECT_HOME="$PWD/.prefect"
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
