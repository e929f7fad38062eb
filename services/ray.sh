#!/usr/bin/env bash
# Start, stop and health-check a Ray head or worker node for subnet-ray.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: services/ray.sh head   [options] [-- extra `ray start` arguments]
       services/ray.sh worker --address HEAD_IP:PORT [options] [-- extra `ray start` arguments]
       services/ray.sh stop   [--name NAME] [--state-dir DIR] [--grace SECS] [--all]
       services/ray.sh health [--address HOST:PORT] [--name NAME] [--min-nodes N] [--timeout SECS]

Starts a Ray node in its own session with a PID file, waits (bounded) until `ray status`
lists it as active, and stops exactly that node.

head options:
  --port PORT             GCS port (default 6379)
  --node-ip-address IP    default 127.0.0.1 (Ray advertises the machine's routable IP
                          for it; pass the head's LAN address for multi-machine clusters)
  --dashboard-host HOST   dashboard / Jobs API bind address (default 127.0.0.1)
  --dashboard-port PORT   default 8265 (`subnet-ray submit --address http://HEAD:8265`)
common options:
  --name NAME             node name for the PID file (default head, or worker)
  --temp-dir DIR          Ray's temp dir (default /tmp/subnet-ray-node-$UID/NAME; at most 40
                          characters: Ray's socket paths beneath it must fit in 107 bytes)
  --num-cpus N, --num-gpus N   resources this node offers (default: detected)
  --state-dir DIR         PID, address and log files
                          (default ${SUBNET_RAY_ROOT:-./.subnet-ray}/services)
  --timeout SECS          how long to wait until the node is active (default 60)
  --auth token|disabled   Ray token authentication (default $RAY_AUTH_MODE, else token).
                          The token is $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH,
                          else STATE_DIR/ray-auth-token, which `head` creates (mode 600);
                          workers on other machines need a copy of it.
  --ray PATH              ray executable (default: PATH, then the repo's .venv)

stop: stops the node recorded under --name (default head) and every process it started:
  SIGTERM, GCS last, SIGKILL after --grace seconds (default 10). --all runs `ray stop`
  instead, which ends every Ray process of this user on the machine.
health (also takes --auth, --state-dir): exits 0 when `ray status` at --address
  (default: the recorded head) answers within --timeout seconds (default 20) with at
  least --min-nodes active nodes (default 1), and the node recorded under --name is among
  them when --name is given; else exits 1 with a message naming the address.

Files in STATE_DIR: ray-NAME.pid (process-group id), ray-NAME.address, ray-NAME.temp-dir,
ray-NAME.log. Environment set for the node: RAY_USAGE_STATS_ENABLED=0,
OMP_WAIT_POLICY=PASSIVE (unless already set).
Clients (subnet-ray run/submit, ray status) need the same RAY_AUTH_MODE and token:
`head` prints the lines to export. Token auth is the default because Ray's GCS and raylet
ports listen on all interfaces whatever the dashboard host; Ray 2.5x also turns it on by
itself when ~/.ray/auth_token exists, so the mode is always set explicitly here.
EOF
}

export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

# Exports RAY_AUTH_MODE, and for token mode where the token is, for ray and its clients.
# With CREATE=1 a missing token file is generated (the head does this).
setup_auth() {
    local mode="$1" state_dir="$2" create="$3"
    case "$mode" in
        disabled) export RAY_AUTH_MODE=disabled ;;
        token)
            export RAY_AUTH_MODE=token
            [[ -n "${RAY_AUTH_TOKEN:-}" ]] && return 0
            export RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$state_dir/ray-auth-token}"
            if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
                (( create )) || die "Ray token auth is on but $RAY_AUTH_TOKEN_PATH does not exist: copy the head's token file there, set RAY_AUTH_TOKEN, or use --auth disabled"
                (umask 077; "$py" -c 'import secrets; print(secrets.token_hex(32))' >"$RAY_AUTH_TOKEN_PATH")
            fi ;;
        *) die "--auth must be 'token' or 'disabled', got '$mode'" ;;
    esac
}

# Prints the node id of the raylet in process group PGID, or nothing.
raylet_node_id() {
    local pid
    for pid in $(group_tree "$1"); do
        [[ "$(ps -o comm= -p "$pid" 2>/dev/null)" == raylet ]] || continue
        ps -ww -o args= -p "$pid" | tr ' ' '\n' | sed -n 's/^--node_id=//p' | head -n 1
        return 0
    done
}

# Prints the node ids that `ray status` output on stdin lists as running (Active or Idle).
active_nodes() {
    awk '/^(Active|Idle):/ { on = 1; next } /^[A-Z][a-z]+/ { on = 0 }
         on && match($0, /node_[0-9a-f]+/) { print substr($0, RSTART + 5, RLENGTH - 5) }'
}

# Succeeds once ADDRESS reports >= MIN active nodes (and NODE_ID among them, if given)
# within SECS seconds; else names the address and fails.
wait_active() {
    local address="$1" min="$2" node_id="$3" secs="$4" pgid="${5:-}"
    local deadline=$((SECONDS + secs)) host="${1%:*}" port="${1##*:}" out="" nodes count last=""
    while :; do
        if tcp_open "$py" "$host" "$port"; then
            if out=$(run_limited 15 "$ray_bin" status --address "$address" 2>&1); then
                nodes=$(active_nodes <<<"$out")
                count=$(grep -c . <<<"$nodes" || true)  # grep -c exits 1 when it counts 0
                if (( count >= min )) && { [[ -z "$node_id" ]] || grep -qx "$node_id" <<<"$nodes"; }; then
                    return 0
                fi
                last="$count active node(s), waiting for ${node_id:+node $node_id and }$min"
            else
                last="$(tail -n 1 <<<"$out")"
            fi
        else
            last="nothing accepts connections on $address"
        fi
        if [[ -n "$pgid" ]] && [[ -z "$(group_tree "$pgid")" ]]; then
            log "error: the Ray node exited during start-up; see ${log_file:-its log}"; return 1
        fi
        if (( SECONDS >= deadline )); then
            log "error: Ray cluster at $address not healthy within ${secs}s ($last)"
            return 1
        fi
        sleep 1
    done
}

cmd_start() {
    local role="$1"; shift
    local name="$role" address="" port=6379 node_ip="" dash_host=127.0.0.1 dash_port=8265
    local temp_dir="" num_cpus="" num_gpus="" state_dir="" timeout=60 ray_override="" extra=()
    local auth="${RAY_AUTH_MODE:-token}"
    [[ "$role" == head ]] && node_ip=127.0.0.1
    while (( $# )); do
        case "$1" in
            --name) name="$2"; shift 2 ;;
            --address) address="$2"; shift 2 ;;
            --port) port="$2"; shift 2 ;;
            --node-ip-address) node_ip="$2"; shift 2 ;;
            --dashboard-host) dash_host="$2"; shift 2 ;;
            --dashboard-port) dash_port="$2"; shift 2 ;;
            --temp-dir) temp_dir="$2"; shift 2 ;;
            --num-cpus) num_cpus="$2"; shift 2 ;;
            --num-gpus) num_gpus="$2"; shift 2 ;;
            --state-dir) state_dir="$2"; shift 2 ;;
            --timeout) timeout="$2"; shift 2 ;;
            --auth) auth="$2"; shift 2 ;;
            --ray) ray_override="$2"; shift 2 ;;
            --) shift; extra=("$@"); break ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown $role option '$1' (see --help)" ;;
        esac
    done
    [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--name must be letters, digits, '.', '_' or '-', got '$name'"
    [[ "$auth" == token || "$auth" == disabled ]] || die "--auth must be 'token' or 'disabled', got '$auth'"
    require_int --timeout "$timeout"
    [[ -z "$num_cpus" ]] || require_int --num-cpus "$num_cpus"
    [[ -z "$num_gpus" ]] || require_int --num-gpus "$num_gpus"
    if [[ "$role" == head ]]; then
        [[ -z "$address" ]] || die "a head takes --port, not --address"
        require_int --port "$port"; require_int --dashboard-port "$dash_port"
    else
        [[ -n "$address" ]] || die "a worker needs --address HEAD_IP:PORT (the head's GCS address)"
        [[ "$address" =~ ^[^:]+:[0-9]+$ ]] || die "--address must be HOST:PORT, got '$address'"
    fi
    temp_dir="${temp_dir:-/tmp/subnet-ray-node-$(id -u)/$name}"
    (( ${#temp_dir} <= 40 )) || die "--temp-dir '$temp_dir' is ${#temp_dir} characters; use at most 40 (Ray's socket paths beneath it must fit in 107 bytes)"
    mkdir -p "$temp_dir"; temp_dir="$(cd "$temp_dir" && pwd)"
    state_dir="${state_dir:-$(default_state_dir)}"
    mkdir -p "$state_dir"; state_dir="$(cd "$state_dir" && pwd)"
    local pid_file="$state_dir/ray-$name.pid"
    log_file="$state_dir/ray-$name.log"
    ray_bin="$(resolve_bin ray "$ray_override")"
    py="$(python_next_to "$ray_bin")"
    setup_auth "$auth" "$state_dir" "$([[ "$role" == head ]] && echo 1 || echo 0)"

    if [[ -f "$pid_file" ]]; then
        local old; old="$(cat "$pid_file")"
        if [[ "$old" =~ ^[0-9]+$ ]] && group_matches "$old" "$temp_dir"; then
            die "Ray node '$name' is already running (pgid $old); run services/ray.sh stop --name $name first"
        fi
        rm -f "$pid_file"
    fi
    local args=(start --temp-dir "$temp_dir" --disable-usage-stats)
    if [[ "$role" == head ]]; then
        tcp_open "$py" 127.0.0.1 "$port" && die "port $port is already in use; choose another with --port"
        address="127.0.0.1:$port"
        args+=(--head --port "$port" --dashboard-host "$dash_host" --dashboard-port "$dash_port")
    else
        tcp_open "$py" "${address%:*}" "${address##*:}" \
            || die "no Ray head accepts connections at $address; start one with services/ray.sh head"
        args+=(--address "$address")
    fi
    [[ -n "$node_ip" ]] && args+=(--node-ip-address "$node_ip")
    [[ -n "$num_cpus" ]] && args+=(--num-cpus "$num_cpus")
    [[ -n "$num_gpus" ]] && args+=(--num-gpus "$num_gpus")

    local started=$SECONDS pgid rc=0
    printf '\n==== %s %s: %s %s\n' "$(date '+%F %T')" "$name" "$ray_bin" "${args[*]}" >>"$log_file"
    pgid="$(start_detached "$log_file" "$ray_bin" "${args[@]}" ${extra[@]+"${extra[@]}"})"
    printf '%s\n' "$pgid" >"$pid_file"
    printf '%s\n' "$address" >"$state_dir/ray-$name.address"
    printf '%s\n' "$temp_dir" >"$state_dir/ray-$name.temp-dir"
    # `ray start` returns once its daemons run; they stay in its process group.
    while is_alive "$pgid"; do
        (( SECONDS - started < timeout )) || { log "error: 'ray start' did not return within ${timeout}s"; rc=1; break; }
        sleep 0.5
    done
    local node_id=""
    if (( rc == 0 )); then
        node_id="$(raylet_node_id "$pgid")"
        if [[ -z "$node_id" ]]; then
            log "error: 'ray start' for '$name' left no raylet running; last lines of $log_file:"
            tail -n 20 "$log_file" >&2; rc=1
        fi
    fi
    if (( rc == 0 )); then
        wait_active "$address" 1 "$node_id" $((timeout - (SECONDS - started) > 5 ? timeout - (SECONDS - started) : 5)) "$pgid" || rc=1
    fi
    if (( rc != 0 )); then
        stop_tree "$pgid" 5 gcs_server || true
        rm -f "$pid_file"
        exit 1
    fi
    printf '%s\n' "$node_id" >"$state_dir/ray-$name.node-id"
    log "Ray $role '$name' active after $((SECONDS - started))s: node $node_id, cluster $address (pgid $pgid)"
    log "  temp dir: $temp_dir   log: $log_file"
    if [[ "$role" == head ]]; then
        local probe="$dash_host"; [[ "$probe" == 0.0.0.0 || "$probe" == "::" ]] && probe=127.0.0.1
        # Any HTTP status (401 under token auth) means the dashboard is up; 000 means none.
        if [[ "$(curl -s -o /dev/null -m 3 -w '%{http_code}' "http://$probe:$dash_port/api/version" || true)" == 000 ]]; then
            log "  note: no dashboard on $probe:$dash_port, so no Jobs API for \`subnet-ray submit\`"
            log "  (this Ray is the minimal install: pip install 'ray[default]'); \`run --address\` works"
        else
            log "  dashboard / Jobs API: http://$probe:$dash_port"
        fi
        log "  clients need:"
        log "  export RAY_ADDRESS=$address RAY_AUTH_MODE=$RAY_AUTH_MODE${RAY_AUTH_TOKEN_PATH:+ RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH}"
    fi
    printf '%s\n' "$address"
}

cmd_stop() {
    local name=head state_dir="" grace=10 all=0 ray_override=""
    while (( $# )); do
        case "$1" in
            --name) name="$2"; shift 2 ;;
            --state-dir) state_dir="$2"; shift 2 ;;
            --grace) grace="$2"; shift 2 ;;
            --all) all=1; shift ;;
            --ray) ray_override="$2"; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown stop option '$1' (see --help)" ;;
        esac
    done
    require_int --grace "$grace"
    if (( all )); then
        ray_bin="$(resolve_bin ray "$ray_override")"
        "$ray_bin" stop --grace-period "$grace"
        return
    fi
    state_dir="${state_dir:-$(default_state_dir)}"
    local pid_file="$state_dir/ray-$name.pid"
    if [[ ! -f "$pid_file" ]]; then log "no Ray node '$name' recorded in $state_dir (no ray-$name.pid)"; return 0; fi
    local pgid temp_dir; pgid="$(cat "$pid_file")"
    temp_dir="$(cat "$state_dir/ray-$name.temp-dir" 2>/dev/null || true)"
    [[ "$pgid" =~ ^[0-9]+$ ]] || die "$pid_file does not hold a pid: '$pgid'"
    if [[ -n "$temp_dir" ]] && group_matches "$pgid" "$temp_dir"; then
        stop_tree "$pgid" "$grace" gcs_server || die "Ray node '$name' (pgid $pgid) still running after SIGKILL"
        log "stopped Ray node '$name' (pgid $pgid)"
    else
        log "Ray node '$name' (pgid $pgid) was not running; removing the stale PID file"
    fi
    rm -f "$pid_file" "$state_dir/ray-$name.node-id"
}

cmd_health() {
    local address="${RAY_ADDRESS:-}" name="" state_dir="" min=1 timeout=20 ray_override="" node_id=""
    local auth="${RAY_AUTH_MODE:-token}"
    while (( $# )); do
        case "$1" in
            --address) address="$2"; shift 2 ;;
            --name) name="$2"; shift 2 ;;
            --state-dir) state_dir="$2"; shift 2 ;;
            --min-nodes) min="$2"; shift 2 ;;
            --timeout) timeout="$2"; shift 2 ;;
            --auth) auth="$2"; shift 2 ;;
            --ray) ray_override="$2"; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown health option '$1' (see --help)" ;;
        esac
    done
    require_int --min-nodes "$min"; require_int --timeout "$timeout"
    [[ "$auth" == token || "$auth" == disabled ]] || die "--auth must be 'token' or 'disabled', got '$auth'"
    state_dir="${state_dir:-$(default_state_dir)}"
    if [[ -z "$address" || -n "$name" ]]; then
        local rec="${name:-head}"
        if [[ -z "$address" ]]; then
            [[ -f "$state_dir/ray-$rec.address" ]] \
                || die "no --address given and no Ray node '$rec' recorded in $state_dir"
            address="$(cat "$state_dir/ray-$rec.address")"
        fi
        [[ -n "$name" ]] && node_id="$(cat "$state_dir/ray-$name.node-id" 2>/dev/null || true)"
        [[ -z "$name" || -n "$node_id" ]] || die "no running Ray node '$name' recorded in $state_dir"
    fi
    address="${address#ray://}"
    [[ "$address" =~ ^[^:/]+:[0-9]+$ ]] || die "--address must be HOST:PORT (the GCS address), got '$address'"
    ray_bin="$(resolve_bin ray "$ray_override")"
    py="$(python_next_to "$ray_bin")"
    setup_auth "$auth" "$state_dir" 0
    wait_active "$address" "$min" "$node_id" "$timeout" || exit 1
    log "Ray cluster at $address is healthy${name:+ (node '$name' active)}"
}

case "${1:-}" in
    head) shift; cmd_start head "$@" ;;
    worker) shift; cmd_start worker "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    health) shift; cmd_health "$@" ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) usage >&2; die "unknown command '$1'" ;;
esac
