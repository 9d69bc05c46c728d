#!/usr/bin/env bash
# Start, stop or query a real one-node SLURM cluster (munged + slurmctld + slurmd) on this machine, for the
# project's tests and CI. Everything it writes (slurm.conf, munge key and socket, state, spool, pid and log files)
# lives under DIR, so it touches no system config and several clusters can coexist as long as their ports differ.
#
#   eval "$(scripts/slurm_cluster.sh start [DIR])"   # prints one line: export SLURM_CONF=DIR/slurm.conf
#   scripts/slurm_cluster.sh status [DIR]            # sinfo + squeue; exit 0 if up, 1 if not
#   scripts/slurm_cluster.sh stop [DIR]              # cancels this cluster's jobs, stops its daemons, removes DIR
#
# DIR defaults to /tmp/byol-bench-slurm. SLURM_CTLD_PORT / SLURM_D_PORT (default 6817 / 6818) move the ports;
# SLURM_CRED_EXPIRE (default 15 s, Slurm's own is 120 s) bounds how long a requeued job waits before rerunning.
# Missing packages (Debian's slurm-wlm, munge) are installed with apt-get when run as root; otherwise exit 2.
# Only SLURM_CONF needs exporting for clients (sbatch, squeue, scontrol, submitit): slurm.conf's AuthInfo tells
# them where this cluster's munge socket is. There is no accounting store, so sacct fails by design.
set -euo pipefail

PROG=slurm_cluster.sh
cmd=${1:-}
DIR=${2:-/tmp/byol-bench-slurm}
CTLD_PORT=${SLURM_CTLD_PORT:-6817}
D_PORT=${SLURM_D_PORT:-6818}
START_TIMEOUT=${SLURM_START_TIMEOUT:-60}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-15}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 64; }
log() { echo "$PROG: $*" >&2; }
die() { echo "$PROG: $*" >&2; exit 1; }

case $cmd in start|stop|status) ;; *) usage ;; esac
# Absolute, so the paths baked into slurm.conf and the export line work from any cwd.
DIR=$(realpath -m -- "$DIR")
CONF=$DIR/slurm.conf
M=$DIR/munge
export SLURM_CONF=$CONF

# Alive and ours: a stale pid file's pid may since belong to another process, whose command line lacks DIR.
pid_alive() {
    local p
    p=$(cat "$1" 2>/dev/null) && [[ -n $p ]] && kill -0 "$p" 2>/dev/null || return 1
    [[ ! -r /proc/$p/cmdline ]] || tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF "$DIR/"
}

# The cluster is up when its controller answers and the node is usable (idle, mixed or allocated).
cluster_up() {
    [[ -f $CONF ]] && pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" || return 1
    timeout 15 sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'
}

# TERM to all three at once (each takes 1-2 s to exit), up to 10 s, then KILL, so a restart finds the ports free.
stop_daemons() {
    local f p i pids=() files=("$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid" "$M/munged.pid")
    for f in "${files[@]}"; do
        if pid_alive "$f"; then p=$(cat "$f"); kill "$p" 2>/dev/null || true; pids+=("$p"); fi
    done
    for ((i = 0; i < 100 && ${#pids[@]}; i++)); do
        sleep 0.1
        for p in "${!pids[@]}"; do kill -0 "${pids[p]}" 2>/dev/null || unset 'pids[p]'; done
    done
    for p in "${pids[@]}"; do log "pid $p ignored TERM, killing"; kill -9 "$p" 2>/dev/null || true; done
    rm -f "${files[@]}"
}

jobs_left() { timeout 5 squeue -h -o '%A' 2>/dev/null || true; }  # unfinished jobs (completing included)

# Pids of this cluster's job processes (and with "steps", its slurmstepd daemons too), found by the
# SLURM_CONF=$CONF in their environment (the submitter's for job processes, slurmd's for step daemons).
# This script and its ancestors are left out, should stop be called from inside a job.
cluster_pids() {
    local f p keep=" " q=$$
    while [[ $q -gt 1 ]]; do keep+="$q "; q=$(awk '{print $4}' "/proc/$q/stat" 2>/dev/null || echo 1); done
    while read -r f; do
        p=${f#/proc/}; p=${p%/environ}
        [[ $keep == *" $p "* ]] && continue
        if [[ $(cat "/proc/$p/comm" 2>/dev/null) == slurmstepd ]]; then
            [[ ${1:-} != steps ]] || echo "$p"
        elif grep -qz '^SLURM_JOB_ID=' "$f" 2>/dev/null; then
            echo "$p"
        fi
    done < <(grep -lzxF "SLURM_CONF=$CONF" /proc/[0-9]*/environ 2>/dev/null || true)
}

stop_all() {
    local ids i
    # Cancel this cluster's jobs first, else their processes outlive slurmd. A cancelled job sits in COMPLETING
    # until its tasks exit, and submitit's tasks ignore the SIGTERM that scancel sends (30 s of KillWait, then
    # SIGKILL): their processes are SIGKILLed here directly.
    if [[ -f $CONF ]] && pid_alive "$DIR/run/slurmctld.pid"; then
        ids=$(jobs_left)
        if [[ -n $ids ]]; then
            # shellcheck disable=SC2086
            timeout 15 scancel $ids 2>/dev/null || true
            # shellcheck disable=SC2046
            kill -9 $(cluster_pids) 2>/dev/null || true
            for ((i = 0; i < 150; i++)); do [[ -z $(jobs_left) ]] && break; sleep 0.1; done
        fi
    fi
    stop_daemons
    # Whatever of the jobs survived anyway (slurmd killed before they ended).
    # shellcheck disable=SC2046
    kill -9 $(cluster_pids steps) 2>/dev/null || true
}

ensure_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
    if [[ $(id -u) != 0 ]]; then
        echo "$PROG: slurmctld/slurmd/munged missing: install Debian packages slurm-wlm and munge (as root)" >&2
        exit 2
    fi
    log "installing slurm-wlm and munge"
    apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2 \
        || die "apt-get install slurm-wlm munge failed"
}

write_conf() {
    local host cpus mem user
    host=$(hostname -s)
    cpus=$(nproc)
    # slurmd drains a node whose RealMemory exceeds what it measures, so take its own measurement when it gives one.
    mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    [[ -n $mem ]] || mem=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
    user=$(id -un)
    cat >"$CONF" <<EOF
# Written by scripts/slurm_cluster.sh: a one-node cluster whose files all live under $DIR.
ClusterName=byolbench
# Loopback addresses: the hostname need not resolve (or may resolve elsewhere) in a container.
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
SlurmUser=$user
SlurmdUser=$user
# Our own munged, not the system one: daemons and clients alike read the socket from here.
# cred_expire (default 120 s) is also how long a requeued job is held before it may start again.
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$M/munge.socket.2,cred_expire=$CRED_EXPIRE
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: track processes by parent pid, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# A pass every 5 s (default 60 s / 30 s), so a requeued job starts soon after its hold ends.
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
# A killed or requeued job's tasks get SIGTERM, then SIGKILL after KillWait (default 30 s). The runners save their
# checkpoints as they go and need no grace time, so a requeue test waits 5 s instead.
KillWait=5
ReturnToService=2
# State starts empty on every start, so job ids would restart at 1 and clash with the previous run's files
# (slurm-1.out, a submitit folder's 1_result.pkl read back as this run's result): start them from the clock.
FirstJobId=$(( $(date +%s) % 60000000 + 1 ))
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_munged() {
    # A key of our own, readable by us only (munged refuses a key others can read).
    [[ -s $M/munge.key ]] || (umask 077 && head -c 1024 /dev/urandom >"$M/munge.key")
    chmod 0400 "$M/munge.key"
    # --force turns munged's refusals of "insecure" paths into warnings, e.g. a DIR inside a world-writable
    # folder without the sticky bit (a CI checkout's tmp), which is fine for a throwaway test cluster.
    munged --force --socket="$M/munge.socket.2" --key-file="$M/munge.key" --log-file="$M/munged.log" \
        --pid-file="$M/munged.pid" --seed-file="$M/munged.seed" 2>>"$M/munged.log" \
        || die "munged failed to start; see $M/munged.log"
    local i
    for ((i = 0; i < 50; i++)); do [[ -S $M/munge.socket.2 ]] && pid_alive "$M/munged.pid" && return 0; sleep 0.1; done
    die "munged failed to start; see $M/munged.log"
}

port_free() { ! timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

start_slurm_daemon() {  # NAME: both daemons fork into the background and write their pid file.
    local name=$1 i
    "$name" -f "$CONF" >>"$DIR/log/$name.log" 2>&1 || fail_start "$name"
    for ((i = 0; i < 100; i++)); do pid_alive "$DIR/run/$name.pid" && break; sleep 0.1; done
    pid_alive "$DIR/run/$name.pid" || fail_start "$name"
    [[ $name == slurmctld ]] || return 0
    # slurmctld writes its pid file before it binds its port: wait until it answers (or dies).
    for ((i = 0; i < START_TIMEOUT * 2; i++)); do
        pid_alive "$DIR/run/slurmctld.pid" || fail_start slurmctld
        timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP' && return 0
        sleep 0.5
    done
    fail_start slurmctld
}

fail_start() {  # NAME: leave nothing half-running, keep DIR for its logs.
    local logf=$DIR/log/$1.log
    [[ $1 == munged ]] && logf=$M/munged.log
    stop_all >/dev/null 2>&1 || true
    die "$1 failed to start; see $logf"
}

do_start() {
    if cluster_up; then
        log "already running from $DIR"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    ensure_packages
    mkdir -p "$DIR" || die "cannot create $DIR"
    # Anything left from an earlier, broken start goes; state and spool start empty so no old job comes back.
    stop_all
    rm -rf "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"
    # Checked before starting anything: a client would otherwise reach another cluster's daemon on the same port.
    port_free "$CTLD_PORT" || die "slurmctld: port $CTLD_PORT in use (another cluster?); set SLURM_CTLD_PORT"
    port_free "$D_PORT" || die "slurmd: port $D_PORT in use (another cluster?); set SLURM_D_PORT"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log" "$M"
    write_conf
    log "starting munged, slurmctld and slurmd from $DIR"
    start_munged
    start_slurm_daemon slurmctld
    start_slurm_daemon slurmd
    local i state=
    for ((i = 0; i < START_TIMEOUT * 2; i++)); do
        pid_alive "$DIR/run/slurmctld.pid" || fail_start slurmctld
        pid_alive "$DIR/run/slurmd.pid" || fail_start slurmd
        state=$(timeout 10 sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)
        [[ $state == idle ]] && { log "node idle"; echo "export SLURM_CONF=$CONF"; return 0; }
        sleep 0.5
    done
    local reason
    reason=$(timeout 10 sinfo -h -N -o '%E' 2>/dev/null | head -n1 || true)
    stop_all >/dev/null 2>&1 || true
    die "slurmd: node not idle after ${START_TIMEOUT}s (state '${state:-no answer}', reason '${reason}'); see $DIR/log/slurmd.log and $DIR/log/slurmctld.log"
}

case $cmd in
start) do_start ;;
stop)
    stop_all
    # Only what start made, then DIR if that left it empty: a mistyped DIR loses nothing else.
    rm -rf "$CONF" "$M" "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"
    if [[ ! -e $DIR ]] || rmdir "$DIR" 2>/dev/null; then log "stopped, removed $DIR"; else log "stopped; $DIR kept (other files in it)"; fi
    ;;
status)
    if ! { [[ -f $CONF ]] && pid_alive "$DIR/run/slurmctld.pid"; }; then log "not running from $DIR"; exit 1; fi
    timeout 15 sinfo || exit 1
    timeout 15 squeue || exit 1
    cluster_up || exit 1
    ;;
esac
