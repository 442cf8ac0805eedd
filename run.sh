#!/usr/bin/env bash
# Set up (once) and run the whole pipeline on MovieLens-1M: ingest → validate → split → train →
# evaluate → register (MLflow, embedded under runs/mlflow). ML-1M is downloaded from GroupLens
# and cached; use a local copy with  ./run.sh --source path/to/ml-1m.zip  (or GRU4REC_ML1M_PATH=...).
# Any other `gru4rec-pipeline run` option can be appended (see --help).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure-venv.sh
exec .venv/bin/gru4rec-pipeline run "$@"
