#!/usr/bin/env bash
# Start the MLflow tracking server + UI on the project's local store.
#   mlflow/server.sh            -> http://127.0.0.1:5000
#   PORT=5001 mlflow/server.sh  -> another port
# Backend: sqlite:///<repo>/mlflow/mlflow.db; artifacts: <repo>/mlflow/artifacts, the same places
# tether.tracking.setup_tracking uses, so runs and registered models logged by the flow show up here.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MLFLOW="${MLFLOW_BIN:-$REPO/.venv/bin/mlflow}"
PORT="${PORT:-5000}"
HOST="${HOST:-127.0.0.1}"   # local only; put an authenticating proxy in front before exposing it

if [[ ! -x "$MLFLOW" ]]; then
  echo "mlflow not found at $MLFLOW: run 'make venv' (or set MLFLOW_BIN)" >&2
  exit 1
fi
mkdir -p "$REPO/mlflow/artifacts"

# One process instead of ~10 (job execution workers, ~1.6 GiB), and no telemetry.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
export MLFLOW_DISABLE_TELEMETRY=true

exec "$MLFLOW" server \
  --backend-store-uri "sqlite:///$REPO/mlflow/mlflow.db" \
  --default-artifact-root "file://$REPO/mlflow/artifacts" \
  --host "$HOST" \
  --port "$PORT" \
  "$@"
