#!/usr/bin/env bash
# Start, stop and health-check an MLflow tracking server for subnet-ray.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: services/mlflow.sh start  [options] [-- extra `mlflow server` arguments]
       services/mlflow.sh stop   [--state-dir DIR] [--grace SECS]
       services/mlflow.sh health [--url URL | --state-dir DIR] [--timeout SECS]

Runs an MLflow tracking server in the background with a PID file and a log file, and
checks it through its /health endpoint.

start options:
  --host HOST                 interface to bind (default 127.0.0.1; 0.0.0.0 serves the LAN,
                              then also pass -- --allowed-hosts ...)
  --port PORT                 port (default $MLFLOW_PORT or 5000)
  --state-dir DIR             PID, log, URL and default SQLite/artifact files
                              (default ${SUBNET_RAY_ROOT:-./.subnet-ray}/services)
  --backend-store-uri URI     default $MLFLOW_BACKEND_URI, e.g.
                              postgresql+psycopg2://user:pass@host:5432/mlflow;
                              else sqlite:///STATE_DIR/mlflow.db
  --artifacts-destination URI default $MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://bucket/mlflow
                              (S3-compatible stores: set MLFLOW_S3_ENDPOINT_URL and AWS_*);
                              else STATE_DIR/mlartifacts
  --workers N                 server worker processes (default 1)
  --timeout SECS              how long to wait for /health (default 60)
  --mlflow PATH               mlflow executable (default: PATH, then the repo's .venv)

stop: SIGTERM to the server's process group, SIGKILL after --grace seconds (default 10).
health: exits 0 when URL/health answers OK within --timeout seconds (default 20), else 1
  with a message naming the URL. URL defaults to the one recorded by start.

Files in STATE_DIR: mlflow.pid (the server's process-group id), mlflow.log, mlflow.url.
Environment: MLFLOW_SERVER_ENABLE_JOB_EXECUTION defaults to false here (the GenAI job
runner is not needed for experiment tracking and costs several processes).
EOF
}

# Prints the tracking URL for a bind host and port (0.0.0.0 is reached via 127.0.0.1).
url_for() {
    local host="$1" port="$2"
    case "$host" in 0.0.0.0|::|'[::]') host=127.0.0.1 ;; esac
    [[ "$host" == *:* && "$host" != \[* ]] && host="[$host]"
    printf 'http://%s:%s\n' "$host" "$port"
}

# Succeeds when URL/health answers OK within SECS seconds; else names the URL and fails.
wait_healthy() {
    local url="$1" secs="$2" deadline=$((SECONDS + $2)) body err=""
    while :; do
        if body=$(curl -fsS -m 3 "$url/health" 2>&1) && [[ "$body" == OK* ]]; then return 0; fi
        err="$body"
        [[ -n "${server_pid:-}" ]] && ! is_alive "$server_pid" && {
            log "error: MLflow server exited during start-up; last lines of $log_file:"
            tail -n 20 "$log_file" >&2; return 1; }
        if (( SECONDS >= deadline )); then
            log "error: MLflow tracking server at $url did not answer $url/health within ${secs}s (last: ${err:-no answer})"
            return 1
        fi
        sleep 0.5
    done
}

cmd_start() {
    local host=127.0.0.1 port="${MLFLOW_PORT:-5000}" state_dir="" backend="${MLFLOW_BACKEND_URI:-}"
    local artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-}" workers=1 timeout=60 mlflow_bin="" extra=()
    while (( $# )); do
        case "$1" in
            --host) host="$2"; shift 2 ;;
            --port) port="$2"; shift 2 ;;
            --state-dir) state_dir="$2"; shift 2 ;;
            --backend-store-uri) backend="$2"; shift 2 ;;
            --artifacts-destination) artifacts="$2"; shift 2 ;;
            --workers) workers="$2"; shift 2 ;;
            --timeout) timeout="$2"; shift 2 ;;
            --mlflow) mlflow_bin="$2"; shift 2 ;;
            --) shift; extra=("$@"); break ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown start option '$1' (see --help)" ;;
        esac
    done
    require_int --port "$port"; require_int --workers "$workers"; require_int --timeout "$timeout"
    (( port >= 1 && port <= 65535 )) || die "--port must be in 1..65535, got $port"
    state_dir="${state_dir:-$(default_state_dir)}"
    mkdir -p "$state_dir"
    state_dir="$(cd "$state_dir" && pwd)"
    local pid_file="$state_dir/mlflow.pid" url_file="$state_dir/mlflow.url"
    log_file="$state_dir/mlflow.log"
    mlflow_bin="$(resolve_bin mlflow "$mlflow_bin")"
    local py; py="$(python_next_to "$mlflow_bin")"

    if [[ -f "$pid_file" ]]; then
        local old; old="$(cat "$pid_file")"
        if [[ "$old" =~ ^[0-9]+$ ]] && group_matches "$old" mlflow; then
            die "an MLflow server is already running (pgid $old, $(cat "$url_file" 2>/dev/null)); run services/mlflow.sh stop first"
        fi
        rm -f "$pid_file"  # stale: the recorded process is gone
    fi
    local url; url="$(url_for "$host" "$port")"
    local probe_host="${url#http://}"; probe_host="${probe_host%:*}"; probe_host="${probe_host#[}"; probe_host="${probe_host%]}"
    if tcp_open "$py" "$probe_host" "$port"; then
        die "port $port on $probe_host is already in use; choose another with --port"
    fi

    [[ -n "$backend" ]] || backend="sqlite:///$state_dir/mlflow.db"
    [[ -n "$artifacts" ]] || artifacts="$state_dir/mlartifacts"
    # Fail now with a clear message rather than in the server log after the wait.
    case "$backend" in
        postgresql*) "$py" -c 'import psycopg2' 2>/dev/null \
            || die "backend $backend needs psycopg2 in $py's environment: pip install psycopg2-binary" ;;
        sqlite:///*) mkdir -p "$(dirname "${backend#sqlite:///}")" ;;
    esac
    case "$artifacts" in
        s3://*) "$py" -c 'import boto3' 2>/dev/null \
            || die "artifacts destination $artifacts needs boto3 in $py's environment: pip install boto3" ;;
        *://*) ;;
        *) mkdir -p "$artifacts"; artifacts="$(cd "$artifacts" && pwd)" ;;
    esac

    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
    export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
    # Passed through the environment so a database password never shows in `ps`.
    export MLFLOW_BACKEND_STORE_URI="$backend" MLFLOW_ARTIFACTS_DESTINATION="$artifacts"
    local started=$SECONDS
    printf '\n==== %s start: %s --host %s --port %s\n' "$(date '+%F %T')" "$mlflow_bin" "$host" "$port" >>"$log_file"
    server_pid="$(start_detached "$log_file" "$mlflow_bin" server --host "$host" --port "$port" \
        --workers "$workers" --serve-artifacts ${extra[@]+"${extra[@]}"})"
    printf '%s\n' "$server_pid" >"$pid_file"
    printf '%s\n' "$url" >"$url_file"
    if ! wait_healthy "$url" "$timeout"; then
        stop_tree "$server_pid" 5 mlflow
        rm -f "$pid_file"
        exit 1
    fi
    log "MLflow tracking server healthy at $url after $((SECONDS - started))s (pgid $server_pid)"
    log "  backend: ${backend%%://*}://...  artifacts: $artifacts"
    log "  log: $log_file   use: export MLFLOW_TRACKING_URI=$url"
    printf '%s\n' "$url"
}

cmd_stop() {
    local state_dir="" grace=10
    while (( $# )); do
        case "$1" in
            --state-dir) state_dir="$2"; shift 2 ;;
            --grace) grace="$2"; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown stop option '$1' (see --help)" ;;
        esac
    done
    require_int --grace "$grace"
    state_dir="${state_dir:-$(default_state_dir)}"
    local pid_file="$state_dir/mlflow.pid"
    if [[ ! -f "$pid_file" ]]; then log "no MLflow server recorded in $state_dir (no mlflow.pid)"; return 0; fi
    local pgid; pgid="$(cat "$pid_file")"
    [[ "$pgid" =~ ^[0-9]+$ ]] || die "$pid_file does not hold a pid: '$pgid'"
    if group_matches "$pgid" mlflow; then
        # The server first, then the launcher that forwards signals to it.
        stop_tree "$pgid" "$grace" mlflow || die "MLflow server (pgid $pgid) still running after SIGKILL"
        log "stopped MLflow server (pgid $pgid)"
    else
        log "MLflow server (pgid $pgid) was not running; removing the stale PID file"
    fi
    rm -f "$pid_file"
}

cmd_health() {
    local url="" state_dir="" timeout=20
    while (( $# )); do
        case "$1" in
            --url) url="${2%/}"; shift 2 ;;
            --state-dir) state_dir="$2"; shift 2 ;;
            --timeout) timeout="$2"; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown health option '$1' (see --help)" ;;
        esac
    done
    require_int --timeout "$timeout"
    if [[ -z "$url" ]]; then
        state_dir="${state_dir:-$(default_state_dir)}"
        if [[ -f "$state_dir/mlflow.url" ]]; then url="$(cat "$state_dir/mlflow.url")"
        else url="http://127.0.0.1:${MLFLOW_PORT:-5000}"; fi
    fi
    wait_healthy "$url" "$timeout" || exit 1
    log "MLflow tracking server at $url is healthy"
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    health) shift; cmd_health "$@" ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) usage >&2; die "unknown command '$1'" ;;
esac
