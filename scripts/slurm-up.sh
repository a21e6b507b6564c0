#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this Linux machine (Debian/Ubuntu, as root).
#
#   sudo scripts/slurm-up.sh [STATE_DIR]      # STATE_DIR defaults to /tmp/bench-slurm
#   sudo scripts/slurm-down.sh [STATE_DIR]    # stops it again
#
# What it does (idempotent; re-running on a healthy cluster only reports it):
#   1. installs the Debian packages slurmctld slurmd slurm-client munge if missing;
#   2. starts munged (creates /etc/munge/munge.key if missing);
#   3. writes a minimal slurm.conf: one node "localhost" with all CPUs and 80% of RAM,
#      one partition "debug" (the default), no accounting database (see below);
#   4. starts slurmctld and `slurmd -N localhost`, waits until the node is idle and runs
#      `srun hostname` as a sanity check.
#
# Where slurm.conf goes: /etc/slurm/slurm.conf, the path every client (sbatch, squeue, scontrol,
# srun -- and submitit, which calls them as subprocesses) reads by default, so no environment
# is needed. If /etc/slurm/slurm.conf already exists and was not written by this script (e.g. a
# workstation that is a client of a real cluster), it is left untouched: the config goes to
# STATE_DIR/slurm.conf and you must `export SLURM_CONF=STATE_DIR/slurm.conf` (printed at the end,
# and written to STATE_DIR/env.sh for `source`). BENCH_SLURM_CONF=/path forces a location.
#
# Accounting: there is no slurmdbd, so `sacct` fails. submitit then logs
# "Bypassing sacct error ..." and reports job.state as UNKNOWN, but results and exceptions
# still come back (it reads the result pickle). A job that dies without writing its result
# (scancel, node failure, OOM kill) is NOT detected as finished: wait with your own deadline.
#
# Memory: RealMemory is 80% of the machine's RAM and DefMemPerCPU is RealMemory/CPUs, so a job
# that does not ask for memory gets its CPU share of it (submitit passes no --mem unless
# mem_gb is set). Ask for little (e.g. mem_gb=1, cpus_per_task=1) so jobs run side by side.
# Memory is only used for scheduling here (task/none, no cgroups): nothing is enforced.
#
# Environment knobs: BENCH_SLURM_CONF (see above), BENCH_SLURM_TIMEOUT (seconds to wait for the
# node to become idle, default 60), BENCH_SLURM_NO_INSTALL=1 (fail instead of apt-get install).
set -euo pipefail

STATE_DIR="${1:-/tmp/bench-slurm}"
STATE_DIR="$(mkdir -p "$STATE_DIR" && cd "$STATE_DIR" && pwd)"
TIMEOUT="${BENCH_SLURM_TIMEOUT:-60}"
MARKER="# Written by bench scripts/slurm-up.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)
T0=$SECONDS

log() { printf '[slurm-up %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() {
    printf '[slurm-up] ERROR: %s\n' "$*" >&2
    for f in "$STATE_DIR/log/slurmctld.log" "$STATE_DIR/log/slurmd.log" "$STATE_DIR/log/munged.log"; do
        if [[ -s "$f" ]]; then
            printf -- '----- last lines of %s -----\n' "$f" >&2
            tail -n 25 "$f" >&2
        fi
    done
    exit 1
}

# pid_alive PIDFILE NAME: the pid in PIDFILE is a running process called NAME.
pid_alive() {
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(tr -dc '0-9' <"$1")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}

[[ "$(uname -s)" == Linux ]] || die "this script starts SLURM on Linux only"
[[ "$(id -u)" == 0 ]] || die "run as root (it installs packages and starts daemons as root): sudo $0 $*"

# ---------------------------------------------------------------- 1. packages
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    [[ "${BENCH_SLURM_NO_INSTALL:-0}" != 1 ]] || die "missing packages: ${missing[*]}"
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
    log "installing ${missing[*]} (apt-get)"
    # Keep the packages' init scripts from starting daemons with the stock config.
    added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_ok=1
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        || apt_ok=0
    ((added_policy)) && rm -f /usr/sbin/policy-rc.d
    ((apt_ok)) || die "apt-get install ${missing[*]} failed"
else
    log "packages already installed: ${PACKAGES[*]}"
fi

# ---------------------------------------------------------------- 2. config
CPUS="$(nproc)"
MEM_MB="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
REAL_MB=$((MEM_MB * 80 / 100))
DEF_MEM_PER_CPU=$((REAL_MB / CPUS))

if [[ -n "${BENCH_SLURM_CONF:-}" ]]; then
    CONF="$BENCH_SLURM_CONF"
elif [[ ! -e /etc/slurm/slurm.conf ]] || grep -qF "$MARKER" /etc/slurm/slurm.conf; then
    CONF=/etc/slurm/slurm.conf
else
    CONF="$STATE_DIR/slurm.conf"
    log "/etc/slurm/slurm.conf exists and is not ours: leaving it alone, using $CONF"
fi
export SLURM_CONF="$CONF"   # for the daemons and client calls below
# Not `sinfo --version`: without a slurm.conf it tries DNS SRV lookups (configless) for ~60 s.
SLURM_VERSION="slurm $(dpkg-query -W -f='${Version}' slurmctld 2>/dev/null || echo '(version unknown)')"

mkdir -p "$STATE_DIR"/{state,spool,log,run} "$(dirname "$CONF")"
new_conf="$(mktemp)"
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<EOF
$MARKER for a single-node test cluster.
# State, spool, pid and log files live in $STATE_DIR. Re-run the script to regenerate.
ClusterName=bench
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Short waits so that scancel/requeue take effect quickly on a test node.
KillWait=5
# Jobs that ask for no memory get their CPU share of RealMemory instead of the whole node.
DefMemPerCPU=$DEF_MEM_PER_CPU
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# Another cluster of ours, started with a different STATE_DIR, still running on this config?
if [[ -e "$CONF" ]] && grep -qF "$MARKER" "$CONF"; then
    other_pidfile="$(sed -n 's/^SlurmctldPidFile=//p' "$CONF")"
    if [[ -n "$other_pidfile" && "$other_pidfile" != "$STATE_DIR/run/slurmctld.pid" ]] &&
        pid_alive "$other_pidfile" slurmctld; then
        other_dir="$(dirname "$(dirname "$other_pidfile")")"
        die "a cluster with STATE_DIR $other_dir is running; stop it first: scripts/slurm-down.sh $other_dir"
    fi
fi

ctld_up=0; slurmd_up=0
pid_alive "$STATE_DIR/run/slurmctld.pid" slurmctld && ctld_up=1
pid_alive "$STATE_DIR/run/slurmd.pid" slurmd && slurmd_up=1

if [[ -e "$CONF" ]] && cmp -s "$new_conf" "$CONF"; then
    :
elif ((ctld_up || slurmd_up)); then
    log "WARNING: $CONF differs from what this machine needs now, but SLURM is running;" \
        "not rewriting it (run scripts/slurm-down.sh first to apply)"
else
    if [[ -e "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
        backup="$CONF.bench-backup.$(date +%Y%m%d%H%M%S)"
        cp -p "$CONF" "$backup"
        log "backed up $CONF to $backup"
    fi
    cp "$new_conf" "$CONF"
    chmod 644 "$CONF"
    log "wrote $CONF (CPUs=$CPUS RealMemory=${REAL_MB}MB DefMemPerCPU=${DEF_MEM_PER_CPU}MB)"
fi
[[ "$CONF" == "$STATE_DIR/slurm.conf" ]] || cp "$CONF" "$STATE_DIR/slurm.conf"

if [[ "$CONF" == /etc/slurm/slurm.conf ]]; then
    : >"$STATE_DIR/env.sh"
else
    printf 'export SLURM_CONF=%q\n' "$CONF" >"$STATE_DIR/env.sh"
fi

print_env() {
    if [[ -s "$STATE_DIR/env.sh" ]]; then
        echo "Set this in every shell that submits jobs (or: source $STATE_DIR/env.sh):"
        cat "$STATE_DIR/env.sh"
    else
        echo "No environment needed: the clients read $CONF."
    fi
}

node_state() { timeout 10 sinfo -h -o %T 2>/dev/null | head -n 1 || true; }

# ---------------------------------------------------------------- already up?
if ((ctld_up && slurmd_up)) && [[ "$(node_state)" =~ ^(idle|mixed|allocated)$ ]]; then
    log "SLURM already running ($SLURM_VERSION): node localhost is $(node_state), state in $STATE_DIR"
    print_env
    exit 0
fi

# ---------------------------------------------------------------- 3. munge
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if munge_ok; then
    log "munged already running"
else
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    # A stale pid file or socket from a killed munged makes the new one refuse to start.
    if [[ -e /run/munge/munged.pid ]] && ! pid_alive /run/munge/munged.pid munged; then
        rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    fi
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    touch "$STATE_DIR/run/munged.started-by-bench"
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || die "munged started but munge -n | unmunge fails (see /var/log/munge/munged.log)"
fi

# ---------------------------------------------------------------- 4. daemons
if ((ctld_up)); then
    log "slurmctld already running (pid $(cat "$STATE_DIR/run/slurmctld.pid"))"
else
    rm -f "$STATE_DIR/run/slurmctld.pid"
    log "starting slurmctld"
    slurmctld -f "$CONF" || die "slurmctld did not start"
fi
if ((slurmd_up)); then
    log "slurmd already running (pid $(cat "$STATE_DIR/run/slurmd.pid"))"
else
    rm -f "$STATE_DIR/run/slurmd.pid"
    log "starting slurmd -N localhost"
    slurmd -f "$CONF" -N localhost || die "slurmd did not start"
fi

log "waiting for node localhost to become idle (timeout ${TIMEOUT}s)"
deadline=$((SECONDS + TIMEOUT))
resumed=0
state=""
while :; do
    state="$(node_state)"
    case "$state" in
        idle | mixed | allocated) break ;;
        drain* | drained* | down*)
            # A node left drained/down by an earlier run: put it back once.
            if ((!resumed)); then
                log "node is '$state'; resuming it"
                scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi
            ;;
    esac
    pid_alive "$STATE_DIR/run/slurmctld.pid" slurmctld || die "slurmctld exited"
    pid_alive "$STATE_DIR/run/slurmd.pid" slurmd || die "slurmd exited"
    ((SECONDS < deadline)) || die "node still '${state:-no answer}' after ${TIMEOUT}s ($(timeout 10 sinfo -h -o '%T %E' 2>&1 | head -n 1))"
    sleep 0.5
done
log "node localhost is $state"

out="$(timeout 60 srun -p debug -N 1 -n 1 -t 1 hostname 2>&1)" || die "srun hostname failed: $out"
log "srun hostname -> $out"
log "SLURM is up ($SLURM_VERSION): partition debug, ${CPUS} CPUs, ${REAL_MB} MB; state in $STATE_DIR"
print_env
