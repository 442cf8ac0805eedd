#!/usr/bin/env bash
# The UI check of a deployed training run, as an operator would start it: a Prefect server, the
# deployments (nightly schedule paused), a process worker, one on-demand run on a small dataset;
# then check_run_page.js looks at the run in headless Chromium. Everything lives under $WORK.
#   infra/ui_check/run.sh /path/to/ml-100k/u.data.gz   (from the repository root; needs node,
#   chromium and `npm install playwright-core` somewhere on NODE_PATH or in infra/ui_check)
set -euo pipefail
SOURCE=${1:?usage: infra/ui_check/run.sh DATA_FILE}
WORK=${WORK:-$(mktemp -d /tmp/gru4rec-ui-check.XXXXXX)}
PORT=${PORT:-4277}
V=${VENV:-.venv}/bin
export PREFECT_HOME=$WORK/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true
export PREFECT_API_URL=http://127.0.0.1:$PORT/api OMP_NUM_THREADS=1
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
CONFIG=$(printf '{"ingest":{"source":"%s"},"training":{"overrides":{"train.epochs":4,"train.threads":1,"model.layers":[64]}},"registry":{"name":"ui-check"},"workdir":"%s"}' "$SOURCE" "$WORK/runs")
RUN=$("$V/prefect" deployment run training_pipeline/on-demand --param config="$CONFIG" | sed -n 's/.*UUID: //p')
echo "flow run $RUN"
for _ in $(seq 600); do
  STATE=$(curl -sf "$PREFECT_API_URL/flow_runs/$RUN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"]["type"])')
  case $STATE in COMPLETED) break ;; FAILED|CRASHED|CANCELLED) echo "run ended $STATE"; tail -30 "$WORK/worker.log"; exit 1 ;; esac
  sleep 2
done
NODE_PATH=${NODE_PATH:-$(dirname "$0")/node_modules} node "$(dirname "$0")/check_run_page.js" "http://127.0.0.1:$PORT" "$RUN" "$WORK/screenshots"
