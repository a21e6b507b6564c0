#!/usr/bin/env bash
# Start a local MLflow tracking server (SQLite backend, artifacts proxied through the server).
#
#   scripts/mlflow-up.sh [DIR] [PORT]     # DIR defaults to ./results, PORT to 5000
#   scripts/mlflow-down.sh [DIR]
#
# The server runs in the background (its own session): pid in DIR/mlflow.pid, port in
# DIR/mlflow.port, log in DIR/mlflow-server.log. Data: DIR/mlflow.db (runs, metrics, params)
# and DIR/artifacts. Artifacts are served by the server (--serve-artifacts): new experiments
# get artifact locations "mlflow-artifacts:/...", so a client anywhere (a SLURM job, another
# machine) uploads and downloads artifacts over HTTP and needs no access to DIR.
# It binds to 127.0.0.1 only; set BENCH_MLFLOW_HOST=0.0.0.0 to let other machines in
# (then also see `mlflow server --help` for --allowed-hosts).
#
# Idempotent: if the server recorded in DIR is running and healthy, it just prints the URI.
# Executable: $MLFLOW_BIN, else the active virtualenv's mlflow, else this repository's
# .venv/bin/mlflow, else mlflow on PATH.
# Prints `export MLFLOW_TRACKING_URI=http://127.0.0.1:PORT` (stdout, last line).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$REPO/results}"
PORT="${2:-5000}"
HOST="${BENCH_MLFLOW_HOST:-127.0.0.1}"
TIMEOUT="${BENCH_MLFLOW_TIMEOUT:-60}"
T0=$SECONDS
SHOW_LOG=0  # die() shows the server log tail once the server was started

log() { printf '[mlflow-up %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() {
    printf '[mlflow-up] ERROR: %s\n' "$*" >&2
    if ((SHOW_LOG)) && [[ -s "$DIR/mlflow-server.log" ]]; then
        printf -- '----- last lines of %s -----\n' "$DIR/mlflow-server.log" >&2
        tail -n 30 "$DIR/mlflow-server.log" >&2
    fi
    exit 1
}

[[ "$PORT" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$PORT'"
mkdir -p "$DIR/artifacts"
DIR="$(cd "$DIR" && pwd)"
URI="http://127.0.0.1:$PORT"

if [[ -n "${MLFLOW_BIN:-}" ]]; then
    MLFLOW="$MLFLOW_BIN"
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/mlflow" ]]; then
    MLFLOW="$VIRTUAL_ENV/bin/mlflow"
elif [[ -x "$REPO/.venv/bin/mlflow" ]]; then
    MLFLOW="$REPO/.venv/bin/mlflow"
elif command -v mlflow >/dev/null; then
    MLFLOW="$(command -v mlflow)"
else
    die "no mlflow executable: set MLFLOW_BIN, activate the venv, or pip install -e ."
fi
[[ -x "$MLFLOW" ]] || die "MLFLOW_BIN=$MLFLOW is not executable"

healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$1/health" >/dev/null 2>&1; }
# Print the pid from DIR/mlflow.pid if that process is still running.
server_pid() {
    local pid
    [[ -s "$DIR/mlflow.pid" ]] || return 1
    pid="$(tr -dc '0-9' <"$DIR/mlflow.pid")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

if pid="$(server_pid)"; then
    old_port="$(cat "$DIR/mlflow.port" 2>/dev/null || echo "?")"
    if [[ "$old_port" == "$PORT" ]] && healthy "$PORT"; then
        log "MLflow server already running (pid $pid) at $URI, data in $DIR"
        echo "export MLFLOW_TRACKING_URI=$URI"
        exit 0
    fi
    die "an MLflow server (pid $pid) already runs on port $old_port for $DIR; stop it first: scripts/mlflow-down.sh $DIR"
fi
if healthy "$PORT" || (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT is already in use by another process; pick another: $0 $DIR OTHER_PORT"
fi

log "starting $MLFLOW server on $URI (data in $DIR)"
SHOW_LOG=1
: >"$DIR/mlflow-server.log"
echo "$PORT" >"$DIR/mlflow.port"
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false and one worker: 2-3 processes instead of ~15.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid nohup "$MLFLOW" server \
    --backend-store-uri "sqlite:///$DIR/mlflow.db" \
    --serve-artifacts --artifacts-destination "$DIR/artifacts" \
    --host "$HOST" --port "$PORT" --workers 1 \
    </dev/null >>"$DIR/mlflow-server.log" 2>&1 &
pid=$!
echo "$pid" >"$DIR/mlflow.pid"

deadline=$((SECONDS + TIMEOUT))
until healthy "$PORT"; do
    kill -0 "$pid" 2>/dev/null || { rm -f "$DIR/mlflow.pid"; die "mlflow server exited"; }
    if ((SECONDS >= deadline)); then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        rm -f "$DIR/mlflow.pid"
        die "mlflow server not healthy after ${TIMEOUT}s"
    fi
    sleep 0.5
done
log "healthy after $((SECONDS - T0))s (pid $pid, log $DIR/mlflow-server.log)"
# bench looks results up by tag value: index them so lookups stay flat as the store grows
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$(dirname "$MLFLOW")/python" -c \
    'import sys; from pathlib import Path; from bench.results.store import index_tags; index_tags(Path(sys.argv[1]))' \
    "$DIR/mlflow.db" || log "could not index the store's tags (bench still works; lookups slow down as it grows)"
echo "export MLFLOW_TRACKING_URI=$URI"
