#!/usr/bin/env bash
# A two-node Slurm cluster on this machine, for testing `subnet-ray submit --slurm` against a real Slurm.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: services/slurm-local.sh start [--dir DIR] [--cpus N] [--timeout SECS]
       services/slurm-local.sh stop  [--dir DIR] [--keep]
       services/slurm-local.sh env   [--dir DIR]

start: runs munged, slurmctld and two slurmd (nodes node1 and node2, NodeHostname=localhost,
  each on its own port on 127.0.0.1, --cpus CPUs each, default 1) with config, state, spool
  and logs under DIR (default /tmp/subnet-ray-slurm-$UID; munge has its own key and socket
  there, so the machine's munge and Slurm, if any, are not touched). Waits until both nodes
  are idle (--timeout, default 60 s), then prints the line to export:
      export SLURM_CONF=DIR/slurm.conf
  Needs root (slurmd runs jobs as their user) and Debian's slurmctld, slurmd, munge and
  slurm-client packages; Debian's slurmd is built with multiple-slurmd support (`slurmd -N`).
stop: cancels every job of this cluster (waiting up to KillWait for them to end), shuts
  down the daemons, stops munged and removes DIR (--keep: leaves DIR and its logs).
env: prints the export line of a running cluster.
EOF
}

PY="$(command -v python3 || die "python3 is needed to pick free ports")"

free_ports() {  # N: prints N distinct free TCP ports on 127.0.0.1 (20000-32767, below the ephemeral range)
    "$PY" - "$1" <<'PY'
import random, socket, sys
ports = []
while len(ports) < int(sys.argv[1]):
    p = random.randrange(20000, 32768)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
    if p not in ports:
        ports.append(p)
print(*ports)
PY
}

pid_alive() { [[ -s "$1" ]] && is_alive "$(cat "$1")"; }

cmd_start() {
    local dir="" cpus=1 timeout=60
    while (( $# )); do
        case "$1" in
            --dir) dir="$2"; shift 2 ;;
            --cpus) cpus="$2"; shift 2 ;;
            --timeout) timeout="$2"; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown start option '$1' (see --help)" ;;
        esac
    done
    require_int --cpus "$cpus"; require_int --timeout "$timeout"
    (( $(id -u) == 0 )) || die "slurmd must run as root (it starts each job as its user); run this as root"
    local bin
    for bin in munged slurmctld slurmd sbatch scontrol sinfo; do
        command -v "$bin" >/dev/null || die "'$bin' not found: apt-get install -y slurmctld slurmd munge slurm-client"
    done
    dir="${dir:-/tmp/subnet-ray-slurm-$(id -u)}"
    [[ -e "$dir/slurmctld.pid" ]] && pid_alive "$dir/slurmctld.pid" \
        && die "a cluster already runs from $dir; run services/slurm-local.sh stop --dir $dir first"
    mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
    chmod 700 "$dir/munge"

    # munge: its own key and socket, so it authenticates this cluster only.
    local key="$dir/munge/munge.key" sock="$dir/munge/munge.socket"
    [[ -s "$key" ]] || { (umask 077; head -c 1024 /dev/urandom >"$key"); }
    munged --force --key-file="$key" --socket="$sock" --pid-file="$dir/munge/munged.pid" \
        --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" \
        || die "munged did not start; see $dir/munge/munged.log"

    local ports ctld p1 p2
    read -r ctld p1 p2 <<<"$(free_ports 3)"
    cat >"$dir/slurm.conf" <<EOF
# Written by services/slurm-local.sh: two nodes on this machine, config and state in $dir.
ClusterName=subnetray
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
# No cgroups in a container: processes are tracked by parentage, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MailProg=/bin/true
# Between a job's SIGTERM and its SIGKILL, as on most clusters.
KillWait=30
# The nodes claim fewer CPUs than the machine has.
SlurmdParameters=config_overrides
NodeName=node1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$p1 CPUs=$cpus State=UNKNOWN
NodeName=node2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$p2 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF" || die "slurmctld did not start; see $dir/slurmctld.log"
    local node
    for node in node1 node2; do
        mkdir -p "$dir/spool/$node"
        slurmd -f "$SLURM_CONF" -N "$node" || die "slurmd $node did not start; see $dir/slurmd-$node.log"
    done
    local deadline=$((SECONDS + timeout)) idle=""
    while :; do
        idle="$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | tr '\n' ' ' || true)"
        [[ "$idle" == "node1 node2 " ]] && break
        if (( SECONDS >= deadline )); then
            sinfo -N >&2 || true
            die "the nodes are not idle within ${timeout}s (idle: '${idle:-none}'); see $dir/*.log"
        fi
        sleep 0.5
    done
    log "Slurm cluster 'subnetray' up in $dir: node1, node2 ($cpus CPU each), controller on 127.0.0.1:$ctld"
    printf 'export SLURM_CONF=%s\n' "$SLURM_CONF"
}

cmd_stop() {
    local dir="" keep=0
    while (( $# )); do
        case "$1" in
            --dir) dir="$2"; shift 2 ;;
            --keep) keep=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown stop option '$1' (see --help)" ;;
        esac
    done
    dir="${dir:-/tmp/subnet-ray-slurm-$(id -u)}"
    [[ -f "$dir/slurm.conf" ]] || { log "no cluster in $dir (no slurm.conf)"; return 0; }
    export SLURM_CONF="$dir/slurm.conf"
    local pids=() f
    for f in "$dir"/slurmctld.pid "$dir"/slurmd-*.pid; do
        [[ -s "$f" ]] && pids+=("$(cat "$f")")
    done
    if pid_alive "$dir/slurmctld.pid"; then
        scancel --quiet --partition=debug 2>/dev/null || true
        local deadline=$((SECONDS + 45))  # KillWait (30 s) and the epilog
        while [[ -n "$(squeue -h -o %i 2>/dev/null || true)" ]] && (( SECONDS < deadline )); do sleep 0.5; done
        scontrol shutdown >/dev/null 2>&1 || true
    fi
    wait_gone 15 ${pids[@]+"${pids[@]}"} || kill -KILL ${pids[@]+"${pids[@]}"} 2>/dev/null || true
    # Job steps outlive their slurmd: end whatever slurmstepd of this cluster is left.
    local pid
    for pid in $(pgrep -x slurmstepd || true); do
        if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if pid_alive "$dir/munge/munged.pid"; then
        local munge_pid; munge_pid="$(cat "$dir/munge/munged.pid")"
        kill -TERM "$munge_pid" 2>/dev/null || true
        wait_gone 10 "$munge_pid" || kill -KILL "$munge_pid" 2>/dev/null || true
    fi
    if (( keep )); then log "stopped the Slurm cluster in $dir (kept)"; else rm -rf "$dir"; log "stopped the Slurm cluster in $dir (removed)"; fi
}

cmd_env() {
    local dir=""
    while (( $# )); do
        case "$1" in
            --dir) dir="$2"; shift 2 ;;
            *) die "unknown env option '$1' (see --help)" ;;
        esac
    done
    dir="${dir:-/tmp/subnet-ray-slurm-$(id -u)}"
    pid_alive "$dir/slurmctld.pid" || die "no running cluster in $dir; start one with services/slurm-local.sh start"
    printf 'export SLURM_CONF=%s\n' "$dir/slurm.conf"
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    env) shift; cmd_env "$@" ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) usage >&2; die "unknown command '$1'" ;;
esac
