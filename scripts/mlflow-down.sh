#!/usr/bin/env bash
# Stop the MLflow server started by scripts/mlflow-up.sh (idempotent). Data in DIR is kept.
#
#   scripts/mlflow-down.sh [DIR]      # DIR defaults to ./results
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$REPO/results}"
log() { printf '[mlflow-down] %s\n' "$*"; }

pidfile="$DIR/mlflow.pid"
pid="$(tr -dc "0-9" 2>/dev/null <"$pidfile" || true)"
if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
    log "no MLflow server running for $DIR"
    rm -f "$pidfile"
    exit 0
fi

# mlflow-up.sh starts the server with setsid, so its pid is also its process group:
# signal the group to stop the uvicorn worker(s) too.
target="$pid"
[[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]] && target="-$pid"
kill -TERM -- "$target" 2>/dev/null || true
for _ in $(seq 150); do
    kill -0 -- "$target" 2>/dev/null || break
    sleep 0.1
done
if kill -0 -- "$target" 2>/dev/null; then
    log "server (pid $pid) still running after 15 s; sending SIGKILL"
    kill -KILL -- "$target" 2>/dev/null || true
fi
rm -f "$pidfile"
log "stopped MLflow server (pid $pid)"
