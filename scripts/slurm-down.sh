#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/slurm-up.sh (idempotent).
#
#   sudo scripts/slurm-down.sh [STATE_DIR]    # STATE_DIR defaults to /tmp/bench-slurm
#
# Cancels the jobs still in the queue (it is a private test cluster), then stops slurmd,
# slurmctld and -- if slurm-up.sh started it -- munged, each by the PID in its pid file.
# The state folder (job state, logs) is kept; delete it for a fresh start.
set -euo pipefail

STATE_DIR="${1:-/tmp/bench-slurm}"
log() { printf '[slurm-down] %s\n' "$*"; }

if [[ ! -d "$STATE_DIR" ]]; then
    log "nothing to do: $STATE_DIR does not exist"
    exit 0
fi
if [[ -s "$STATE_DIR/env.sh" ]]; then
    # shellcheck disable=SC1091
    source "$STATE_DIR/env.sh"
fi

# pid_of PIDFILE NAME: print the pid if it is a running process called NAME.
pid_of() {
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(tr -dc '0-9' <"$1")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] && echo "$pid"
}

# stop PIDFILE NAME: SIGTERM, wait up to 15 s, then SIGKILL.
stop() {
    local pid
    if ! pid="$(pid_of "$1" "$2")"; then
        log "$2 not running"
        rm -f "$1"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$2 (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
    log "stopped $2 (pid $pid)"
}

if pid_of "$STATE_DIR/run/slurmctld.pid" slurmctld >/dev/null; then
    jobs="$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u || true)"
    if [[ -n "$jobs" ]]; then
        log "cancelling jobs: $(echo $jobs)"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 100); do
            [[ -z "$(timeout 10 squeue -h -o %A 2>/dev/null)" ]] && break
            sleep 0.1
        done
    fi
fi

stop "$STATE_DIR/run/slurmd.pid" slurmd
stop "$STATE_DIR/run/slurmctld.pid" slurmctld
if [[ -e "$STATE_DIR/run/munged.started-by-bench" ]]; then
    stop /run/munge/munged.pid munged
    rm -f "$STATE_DIR/run/munged.started-by-bench"
elif pid_of /run/munge/munged.pid munged >/dev/null; then
    log "munged was not started by slurm-up.sh; leaving it alone"
else
    log "munged not running"
fi
