#!/usr/bin/env bash
# The UI check of a deployed training run, as an operator would do it: a Prefect server, the
# deployments (nightly schedule paused), a process worker whose GRU4REC_ML1M_PATH is DATA_FILE;
# then check_run_page.js clicks Quick run on `on-demand` in headless Chromium and watches the run.
# Server state lives under $WORK; the run writes runs/ in the repository root (workdir: runs).
#   infra/ui_check/run.sh /path/to/ratings.dat.gz   (from the repository root; needs node,
#   chromium and `npm install playwright-core` somewhere on NODE_PATH or in infra/ui_check)
set -euo pipefail
SOURCE=${1:?usage: infra/ui_check/run.sh DATA_FILE}
WORK=${WORK:-$(mktemp -d /tmp/gru4rec-ui-check.XXXXXX)}
PORT=${PORT:-4277}
V=${VENV:-.venv}/bin
export PREFECT_HOME=$WORK/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true
export PREFECT_API_URL=http://127.0.0.1:$PORT/api OMP_NUM_THREADS=1 GRU4REC_ML1M_PATH=$SOURCE
setsid "$V/prefect" server start --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 &
SERVER=$!
stop() {  # the worker keeps retrying a stopped server: TERM, then KILL
  kill -- ${WORKER:+-$WORKER} -$SERVER 2>/dev/null || true
  sleep 5
  kill -9 -- ${WORKER:+-$WORKER} -$SERVER 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 180); do curl -sf "$PREFECT_API_URL/health" >/dev/null && break; sleep 1; done
"$V/gru4rec-pipeline" deploy
"$V/gru4rec-pipeline" schedule pause
setsid "$V/prefect" worker start --pool gru4rec-process >"$WORK/worker.log" 2>&1 &
WORKER=$!
NODE_PATH=${NODE_PATH:-$(dirname "$0")/node_modules} node "$(dirname "$0")/check_run_page.js" "http://127.0.0.1:$PORT" training_pipeline/on-demand "$WORK/screenshots"
