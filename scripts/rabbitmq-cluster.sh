#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this one machine, beside the shared broker of services.sh:
#   scripts/rabbitmq-cluster.sh start|stop|status|env
#   scripts/rabbitmq-cluster.sh ctl N ARGS...    rabbitmqctl ARGS against node N (1-3)
#   scripts/rabbitmq-cluster.sh pid N            the Erlang VM's pid of node N (for kill -9)
#
# Nodes dcl1@localhost..dcl3@localhost, AMQP on 127.0.0.1:5681-5683 (guest/guest), Erlang
# distribution on 127.0.0.1:25681-25683, data under $DATA_DIR, pid files under $STATE_DIR.
# They use the rabbitmq user's Erlang cookie (as the shared broker does) and the epmd on
# 127.0.0.1:4369 (started here, and stopped again, only if none is running). `start` is
# idempotent: it also restarts a node that died and re-joins it. Stopped by pid, never by name.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=/run/ganeti-dispatcher-cluster
DATA_DIR=/var/lib/ganeti-dispatcher-cluster
DEADLINE=${SERVICES_DEADLINE:-90}
NODES=(1 2 3)
AMQP_BASE=5680
DIST_BASE=25680
RMQ_USER=rabbitmq
RMQ_HOME=/var/lib/rabbitmq
EPMD_PID_FILE=$STATE_DIR/epmd.pid

log() { printf 'rabbitmq-cluster: %s\n' "$*" >&2; }
die() { printf 'rabbitmq-cluster: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

node_name() { echo "dcl$1@localhost"; }
amqp_port() { echo $((AMQP_BASE + $1)); }
node_dir() { echo "$DATA_DIR/dcl$1"; }
beam_pid_file() { echo "$STATE_DIR/dcl$1/beam.pid"; }
wrapper_pid_file() { echo "$STATE_DIR/dcl$1.wrapper.pid"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

alive() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

pid_from() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [ -n "$pid" ] && alive "$pid" || return 1
    printf '%s\n' "$pid"
}

pid_matches() {
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$2"* ]]
}

wait_gone() {
    local end=$((SECONDS + DEADLINE)) pid still
    while :; do
        still=0
        for pid in "$@"; do
            alive "$pid" && still=1
        done
        [ "$still" = 0 ] && return 0
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.1
    done
}

epmd_up() { /usr/bin/epmd -names >/dev/null 2>&1; }

# The node's environment: its own name, ports and directories; an empty env file so that
# /etc/rabbitmq/rabbitmq-env.conf (the shared broker's NODENAME, PID_FILE) does not apply.
node_env() {
    local n=$1 dir
    dir=$(node_dir "$n")
    printf '%s\n' \
        "HOME=$RMQ_HOME" \
        "ERL_EPMD_ADDRESS=127.0.0.1" \
        "RABBITMQ_CONF_ENV_FILE=$dir/env.conf" \
        "RABBITMQ_NODENAME=$(node_name "$n")" \
        "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1" \
        "RABBITMQ_NODE_PORT=$(amqp_port "$n")" \
        "RABBITMQ_DIST_PORT=$((DIST_BASE + n))" \
        "RABBITMQ_MNESIA_BASE=$dir/mnesia" \
        "RABBITMQ_LOG_BASE=$dir/log" \
        "RABBITMQ_PID_FILE=$(beam_pid_file "$n")" \
        "RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins" \
        "RABBITMQ_CONFIG_FILE=$dir/rabbitmq" \
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
}

as_rabbitmq() {
    local n=$1
    shift
    local -a envs
    mapfile -t envs < <(node_env "$n")
    (cd "$RMQ_HOME" && setpriv --reuid="$RMQ_USER" --regid="$RMQ_USER" --init-groups \
        env "${envs[@]}" "$@")
}

ctl() {
    local n=$1
    shift
    as_rabbitmq "$n" /usr/lib/rabbitmq/bin/rabbitmqctl -n "$(node_name "$n")" "$@"
}

node_running() {
    local pid
    pid=$(pid_from "$(beam_pid_file "$1")") || return 1
    pid_matches "$pid" beam || return 1
    port_open "$(amqp_port "$1")"
}

configure_node() {
    local n=$1 dir
    dir=$(node_dir "$n")
    install -d -o "$RMQ_USER" -g "$RMQ_USER" -m 0750 "$dir" "$dir/log"
    install -d -o "$RMQ_USER" -g "$RMQ_USER" -m 0755 "$STATE_DIR/dcl$n"
    : >"$dir/env.conf"
    echo '[].' >"$dir/enabled_plugins"
    # Three nodes and the shared broker each take their memory limit from the whole machine.
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
vm_memory_high_watermark.relative = 0.15
EOF
    chown "$RMQ_USER:$RMQ_USER" "$dir/env.conf" "$dir/enabled_plugins" "$dir/rabbitmq.conf"
}

start_node() {
    local n=$1 log
    log=$(node_dir "$n")/server.log
    configure_node "$n"
    stop_node "$n"   # a stale wrapper or VM from an earlier run
    local -a envs
    mapfile -t envs < <(node_env "$n")
    (
        cd "$RMQ_HOME"
        ulimit -n 65536 2>/dev/null || true
        exec setsid setpriv --reuid="$RMQ_USER" --regid="$RMQ_USER" --init-groups \
            env "${envs[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server </dev/null >>"$log" 2>&1 9>&-
    ) &
    echo $! >"$(wrapper_pid_file "$n")"
}

await_node() {
    local n=$1 end=$((SECONDS + DEADLINE)) wrapper log
    log=$(node_dir "$n")/server.log
    wrapper=$(cat "$(wrapper_pid_file "$n")")
    until node_running "$n"; do
        if ! alive "$wrapper"; then
            tail -n 30 "$log" >&2 || true
            die "node $(node_name "$n") exited during start (log: $log)"
        fi
        [ "$SECONDS" -lt "$end" ] || die "node $(node_name "$n") not up after ${DEADLINE}s"
        sleep 0.2
    done
    ctl "$n" -q await_startup >/dev/null || die "node $(node_name "$n") did not finish booting"
}

stop_node() {
    local n=$1 pid beam="" wrapper=""
    if pid=$(pid_from "$(beam_pid_file "$n")") && pid_matches "$pid" beam; then
        beam=$pid
    fi
    if pid=$(pid_from "$(wrapper_pid_file "$n")") && pid_matches "$pid" rabbitmq-server; then
        wrapper=$pid
    fi
    if [ -n "$beam" ]; then
        kill -TERM "$beam" 2>/dev/null || true
    elif [ -n "$wrapper" ]; then
        kill -TERM "$wrapper" 2>/dev/null || true
    fi
    if [ -n "$beam$wrapper" ] && ! wait_gone $beam $wrapper; then
        log "node $(node_name "$n") did not stop in ${DEADLINE}s, killing it"
        kill -KILL $beam $wrapper 2>/dev/null || true
        wait_gone $beam $wrapper || true
    fi
    rm -f "$(beam_pid_file "$n")" "$(wrapper_pid_file "$n")"
}

# in_cluster N: node N's running members include dcl1 (node 1 trivially)
in_cluster() {
    [ "$1" = 1 ] && return 0
    ctl "$1" -q cluster_status --formatter json 2>/dev/null \
        | grep -q "\"running_nodes\":\[[^]]*\"$(node_name 1)\""
}

join_node() {
    local n=$1
    in_cluster "$n" && return 0
    log "joining $(node_name "$n") to $(node_name 1)"
    ctl "$n" -q stop_app >/dev/null
    ctl "$n" -q join_cluster "$(node_name 1)" >/dev/null
    ctl "$n" -q start_app >/dev/null
    ctl "$n" -q await_startup >/dev/null
}

start_epmd() {
    epmd_up && return 0
    (cd / && exec setsid setpriv --reuid="$RMQ_USER" --regid="$RMQ_USER" --init-groups \
        /usr/bin/epmd -address 127.0.0.1 </dev/null >>"$DATA_DIR/epmd.log" 2>&1 9>&-) &
    echo $! >"$EPMD_PID_FILE"
    local end=$((SECONDS + 10))
    until epmd_up; do
        [ "$SECONDS" -lt "$end" ] || die "epmd did not start"
        sleep 0.05
    done
}

# Only an epmd this script started, and only once no node is registered with it any more.
stop_epmd() {
    local pid
    if pid=$(pid_from "$EPMD_PID_FILE") && pid_matches "$pid" epmd; then
        if /usr/bin/epmd -names 2>/dev/null | grep -q '^name '; then
            log "epmd still serves other nodes; leaving it running"
            return 0
        fi
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$EPMD_PID_FILE"
}

# The nodes share the rabbitmq user's cookie (the shared broker's too); on a machine where no
# node ever ran, three nodes booting at once would race to create it.
ensure_cookie() {
    local cookie=$RMQ_HOME/.erlang.cookie
    [ -s "$cookie" ] && return 0
    (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$cookie")
    chown "$RMQ_USER:$RMQ_USER" "$cookie"
    chmod 0400 "$cookie"
}

start() {
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || bash "$ROOT/scripts/services.sh" start-rabbitmq
    install -d -o "$RMQ_USER" -g "$RMQ_USER" -m 0755 "$DATA_DIR"
    ensure_cookie
    start_epmd
    local n started=()
    for n in "${NODES[@]}"; do
        if ! node_running "$n"; then
            start_node "$n"
            started+=("$n")
        fi
    done
    for n in "${started[@]}"; do
        await_node "$n"
    done
    for n in "${NODES[@]}"; do
        join_node "$n"
    done
    [ ${#started[@]} = 0 ] || log "cluster up: $(node_name 1), $(node_name 2), $(node_name 3) on 127.0.0.1:$(amqp_port 1)-$(amqp_port 3)"
}

stop() {
    local n
    for n in "${NODES[@]}"; do
        stop_node "$n"
    done
    stop_epmd
}

status() {
    local n rc=0
    for n in "${NODES[@]}"; do
        if node_running "$n"; then
            echo "$(node_name "$n"): running (pid $(pid_from "$(beam_pid_file "$n")"), 127.0.0.1:$(amqp_port "$n"))"
        else
            echo "$(node_name "$n"): stopped"
            rc=3
        fi
    done
    return "$rc"
}

print_env() {
    local n urls=()
    for n in "${NODES[@]}"; do
        urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/")
    done
    echo "export DISPATCHER_AMQP_URL=$(IFS=,; echo "${urls[*]}")"
}

usage() {
    echo "usage: $0 start|stop|status|env | ctl N RABBITMQCTL-ARGS... | pid N" >&2
    exit 2
}

[ $# -ge 1 ] || usage
mkdir -p "$STATE_DIR"
case $1 in
    start | stop)
        exec 9>"$STATE_DIR/cluster.lock"
        flock -w 600 9 || die "another rabbitmq-cluster.sh is still running"
        ;;
esac
case $1 in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) print_env ;;
    ctl)
        [ $# -ge 3 ] && [[ $2 =~ ^[123]$ ]] || usage
        ctl "$2" "${@:3}"
        ;;
    pid)
        [ $# = 2 ] && [[ $2 =~ ^[123]$ ]] || usage
        pid_from "$(beam_pid_file "$2")" || die "node $(node_name "$2") is not running"
        ;;
    *) usage ;;
esac
