#!/usr/bin/env bash
# Set up (once) and run the pipeline on MovieLens-1M (downloaded from GroupLens, cached).
# Use a local copy with:  ./run.sh --source path/to/ml-1m.zip   (or GRU4REC_ML1M_PATH=...)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-venv.sh
exec .venv/bin/gru4rec-pipeline prepare --out runs/ml-1m "$@"
