# Shared helpers for services/mlflow.sh and services/ray.sh. Source it; do not run it.
#
# Every service runs in its own session (setsid), so its PID file holds one number that is
# the session id, the process-group id and the pid of the first process at once. Stopping
# signals that group plus every descendant of it, and nothing else: other Ray clusters or
# MLflow servers on the same machine are never touched (unlike `ray stop`).

SERVICES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SERVICES_DIR/.." && pwd)"

log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Prints the default state folder: ${SUBNET_RAY_ROOT:-./.subnet-ray}/services.
default_state_dir() {
    local root="${SUBNET_RAY_ROOT:-./.subnet-ray}"
    case "$root" in
        *://*) die "SUBNET_RAY_ROOT=$root is not a local folder; pass --state-dir DIR for PID and log files" ;;
    esac
    printf '%s/services\n' "$root"
}

# Prints the path of an executable: $override, else PATH, else the repo's .venv/bin.
resolve_bin() {
    local name="$1" override="${2:-}"
    if [[ -n "$override" ]]; then
        [[ -x "$override" ]] || die "$name executable '$override' does not exist or is not executable"
        printf '%s\n' "$override"; return
    fi
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
    if [[ -x "$REPO_DIR/.venv/bin/$name" ]]; then printf '%s\n' "$REPO_DIR/.venv/bin/$name"; return; fi
    die "cannot find '$name' on PATH or in $REPO_DIR/.venv/bin (install the project first)"
}

# Prints the Python interpreter that sits next to an executable from a venv or conda env.
python_next_to() {
    local dir; dir="$(dirname "$1")"
    if [[ -x "$dir/python" ]]; then printf '%s\n' "$dir/python"
    elif [[ -x "$dir/python3" ]]; then printf '%s\n' "$dir/python3"
    else command -v python3 || die "no python3 next to $1 or on PATH"
    fi
}

require_int() {  # NAME VALUE
    [[ "$2" =~ ^[0-9]+$ ]] || die "$1 must be a non-negative integer, got '$2'"
}

# Succeeds when something accepts TCP connections on HOST:PORT within 2 s.
tcp_open() {
    local py="$1" host="$2" port="$3"
    "$py" - "$host" "$port" <<'PY' 2>/dev/null
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}

# Runs a command with a time limit when coreutils timeout is available (Linux; gtimeout on
# macOS). Callers check TCP first, so without it a dead address still fails fast.
run_limited() {
    local secs="$1"; shift
    if command -v timeout >/dev/null 2>&1; then timeout "$secs" "$@"
    elif command -v gtimeout >/dev/null 2>&1; then gtimeout "$secs" "$@"
    else "$@"
    fi
}

# Starts a command in a new session, detached from the terminal; prints its pid (== pgid).
start_detached() {
    local log_file="$1"; shift
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" >>"$log_file" 2>&1 </dev/null &
    else  # macOS has no setsid(1): do the same from Python
        python3 -c 'import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])' "$@" \
            >>"$log_file" 2>&1 </dev/null &
    fi
    printf '%s\n' "$!"
}

# Prints the pids of process group PGID and of all their descendants.
group_tree() {
    local pgid="$1"
    ps -e -o pid= -o ppid= -o pgid= | awk -v g="$pgid" '
        { pid[NR] = $1; ppid[NR] = $2; if ($3 == g) keep[$1] = 1 }
        END {
            do { grown = 0
                 for (i = 1; i <= NR; i++)
                     if (!(pid[i] in keep) && (ppid[i] in keep)) { keep[pid[i]] = 1; grown = 1 }
            } while (grown)
            for (p in keep) print p
        }'
}

# Succeeds when some process of group PGID (or a descendant) has MARKER in its command line:
# the PID file is ours and not a recycled pid. (-ww: ps cuts args to the terminal width.)
group_matches() {
    local pgid="$1" marker="$2" pid
    for pid in $(group_tree "$pgid"); do
        if ps -ww -o args= -p "$pid" 2>/dev/null | grep -qF -- "$marker"; then return 0; fi
    done
    return 1
}

# Succeeds when PID runs (a zombie does not count: nobody may reap it in a container).
is_alive() {
    local stat
    stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ -n "$stat" && "$stat" != Z* ]]
}

# Waits until none of PIDS is alive, up to SECS seconds; succeeds if all are gone.
wait_gone() {
    local secs="$1"; shift
    local deadline=$((SECONDS + secs)) pid alive
    while :; do
        alive=0
        for pid in "$@"; do is_alive "$pid" && alive=1 && break; done
        (( alive == 0 )) && return 0
        (( SECONDS >= deadline )) && return 1
        sleep 0.2
    done
}

# Stops group PGID and its descendants: SIGTERM to all but those whose command name is in
# LAST (space-separated), then SIGTERM to those, then SIGKILL to whatever is left after
# GRACE seconds per phase. Ray's GCS hangs in shutdown if it goes before its raylet.
stop_tree() {
    local pgid="$1" grace="$2" last="${3:-}"
    local pids first=() later=() pid comm
    pids=$(group_tree "$pgid")
    [[ -z "$pids" ]] && return 0
    for pid in $pids; do
        comm=$(ps -o comm= -p "$pid" 2>/dev/null) || continue
        if [[ -n "$last" && " $last " == *" $comm "* ]]; then later+=("$pid"); else first+=("$pid"); fi
    done
    if (( ${#first[@]} )); then
        kill -TERM "${first[@]}" 2>/dev/null || true
        wait_gone "$grace" "${first[@]}" || kill -KILL "${first[@]}" 2>/dev/null || true
    fi
    if (( ${#later[@]} )); then
        kill -TERM "${later[@]}" 2>/dev/null || true
        wait_gone "$grace" "${later[@]}" || kill -KILL "${later[@]}" 2>/dev/null || true
    fi
    # Anything the group spawned while we were stopping it.
    pids=$(group_tree "$pgid")
    [[ -n "$pids" ]] && { kill -KILL $pids 2>/dev/null || true; }
    wait_gone 5 $pids
}
