# Sourced by run.sh and test.sh: create .venv and install the project (with dev tools) once,
# again only when pyproject.toml changes. On a machine with an NVIDIA GPU, pip takes the CUDA
# build of torch from PyPI; here it finds the CPU wheel on local disk.
set -euo pipefail
PY="${PYTHON:-python3}"
stamp_key=$(sha256sum pyproject.toml | cut -c1-16)
stamp=".venv/.installed-$stamp_key"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating virtual environment in .venv" >&2
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ]; then
  echo "[setup] installing gru4rec-pipeline and its dependencies (first run only)" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
