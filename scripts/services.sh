#!/usr/bin/env bash
# Local RabbitMQ and PostgreSQL 15 for development and CI, without systemd.
#
#   scripts/services.sh start|stop|status|env
#   scripts/services.sh start-rabbitmq|stop-rabbitmq|start-postgres|stop-postgres
#
# RabbitMQ listens on 127.0.0.1:5672 (guest/guest), PostgreSQL on 127.0.0.1:5432 with role
# dispatcher/dispatcher owning the databases dispatcher and dispatcher_test. Every command is
# idempotent; processes are tracked by pid files under $STATE_DIR and stopped by pid.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=/run/ganeti-dispatcher
DEADLINE=${SERVICES_DEADLINE:-90}   # seconds to wait for a service to come up or go down

RMQ_USER=rabbitmq
RMQ_HOME=/var/lib/rabbitmq
RMQ_RUN_DIR=$STATE_DIR/rabbitmq                 # owned by rabbitmq: it writes its own pid file
RMQ_PID_FILE=$RMQ_RUN_DIR/beam.pid              # RABBITMQ_PID_FILE: the Erlang VM (beam.smp)
RMQ_WRAPPER_PID_FILE=$STATE_DIR/rabbitmq-server.pid   # the rabbitmq-server shell wrapper we start
EPMD_PID_FILE=$STATE_DIR/epmd.pid
RMQ_LOG=/var/log/rabbitmq/dispatcher-rabbitmq-server.log
RMQ_ENV_CONF=/etc/rabbitmq/rabbitmq-env.conf
RMQ_PORT=5672

PG_VERSION=15
PG_CLUSTER=main
PG_PORT=5432
PG_CONF_D=/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d
DB_USER=dispatcher
DB_PASSWORD=dev-only-pg-7Qx2
DB_NAMES=(dispatcher dispatcher_test)

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# ---------------------------------------------------------------------------------------------
# helpers

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# alive PID: the process exists and is not a zombie (PID 1 here may reap orphans late, and
# kill -0 succeeds on a zombie)
alive() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# pid_from FILE: print the pid in FILE if that process is alive
pid_from() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [ -n "$pid" ] && alive "$pid" || return 1
    printf '%s\n' "$pid"
}

# pid_matches PID WORD: the process's command line contains WORD (guards against reused pids)
pid_matches() {
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$2"* ]]
}

# wait_gone PID...: wait until all PIDs have exited; false on deadline
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

# stop_pid PID: TERM, wait, KILL as a last resort
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    wait_gone "$pid" && return 0
    log "pid $pid ignored SIGTERM for ${DEADLINE}s, killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" || true
}

# apt_install PKG...: install Debian packages without starting their services now
apt_install() {
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        created=1
    fi
    log "installing $*"
    local rc=0
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$@" >/dev/null; } \
        || rc=$?
    if [ "$created" = 1 ]; then
        rm -f "$policy"
    fi
    [ "$rc" = 0 ] || die "apt-get install $* failed"
}
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------------------------------------
# RabbitMQ

rmq_installed() { [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && command -v epmd >/dev/null; }

# epmd -names asks epmd properly (a bare TCP probe makes epmd log "partial packet")
epmd_up() { /usr/bin/epmd -names >/dev/null 2>&1; }

rmq_running() {
    local pid
    pid=$(pid_from "$RMQ_PID_FILE") || return 1
    pid_matches "$pid" beam || return 1
    port_open "$RMQ_PORT"
}

rmq_configure() {
    # Loopback only: AMQP listener, Erlang distribution and epmd. The CLI tools read this file
    # too, so rabbitmqctl/rabbitmq-diagnostics find the node by the same name.
    local want
    want=$(cat <<EOF
# Written by ganeti-dispatcher scripts/services.sh (local development and CI broker).
NODENAME=rabbit@localhost
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$RMQ_PORT
PID_FILE=$RMQ_PID_FILE
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export ERL_EPMD_ADDRESS=127.0.0.1
EOF
)
    if [ "$(cat "$RMQ_ENV_CONF" 2>/dev/null)" != "$want" ]; then
        printf '%s\n' "$want" >"$RMQ_ENV_CONF"
    fi
    install -d -o "$RMQ_USER" -g "$RMQ_USER" -m 0755 "$RMQ_RUN_DIR"
    install -d -o "$RMQ_USER" -g "$RMQ_USER" -m 0750 /var/log/rabbitmq
}

as_rabbitmq() {
    setpriv --reuid="$RMQ_USER" --regid="$RMQ_USER" --init-groups \
        env HOME="$RMQ_HOME" ERL_EPMD_ADDRESS=127.0.0.1 "$@"
}

# rabbitmq-diagnostics/rabbitmqctl as the rabbitmq user (same Erlang cookie as the node)
rmq_cli() { (cd "$RMQ_HOME" && as_rabbitmq "/usr/lib/rabbitmq/bin/$1" "${@:2}"); }

start_rabbitmq() {
    rmq_installed || apt_install rabbitmq-server
    rmq_configure
    if rmq_running; then
        return 0
    fi
    stop_rabbitmq_processes   # stale VM or wrapper from an earlier run
    rm -f "$RMQ_PID_FILE"

    # epmd first, in our own hands (otherwise the VM daemonizes one we could not stop by pid)
    if ! epmd_up; then
        (cd / && exec setsid setpriv --reuid="$RMQ_USER" --regid="$RMQ_USER" --init-groups \
            /usr/bin/epmd -address 127.0.0.1 </dev/null >>/var/log/rabbitmq/epmd.log 2>&1 9>&-) &
        echo $! >"$EPMD_PID_FILE"
        local epmd_end=$((SECONDS + 10))
        until epmd_up; do
            [ "$SECONDS" -lt "$epmd_end" ] || die "epmd did not start (log: /var/log/rabbitmq/epmd.log)"
            sleep 0.05
        done
    fi

    log "starting RabbitMQ"
    (
        cd "$RMQ_HOME"
        ulimit -n 65536 2>/dev/null || true
        exec setsid setpriv --reuid="$RMQ_USER" --regid="$RMQ_USER" --init-groups \
            env HOME="$RMQ_HOME" ERL_EPMD_ADDRESS=127.0.0.1 \
            /usr/lib/rabbitmq/bin/rabbitmq-server </dev/null >>"$RMQ_LOG" 2>&1 9>&-
    ) &
    echo $! >"$RMQ_WRAPPER_PID_FILE"

    local end=$((SECONDS + DEADLINE)) wrapper
    wrapper=$(cat "$RMQ_WRAPPER_PID_FILE")
    until rmq_running; do
        if ! alive "$wrapper"; then
            tail -n 30 "$RMQ_LOG" >&2 || true
            die "rabbitmq-server exited during start (log: $RMQ_LOG)"
        fi
        [ "$SECONDS" -lt "$end" ] || die "RabbitMQ not up after ${DEADLINE}s (log: $RMQ_LOG)"
        sleep 0.2
    done
    rmq_cli rabbitmq-diagnostics -q check_running >/dev/null \
        || die "rabbitmq-diagnostics check_running failed"
    rmq_ensure_quorum
    log "RabbitMQ up on 127.0.0.1:$RMQ_PORT"
}

# rmq_declare_quorum: declare (and delete) a durable quorum queue over AMQP
rmq_declare_quorum() {
    "$ROOT/.venv/bin/python" - <<'EOF'
import asyncio

import aio_pika


async def main() -> None:
    conn = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/", timeout=10)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(
            "dispatcher-tooling-quorum-check", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await q.delete(if_unused=False, if_empty=False)


asyncio.run(main())
EOF
}

# Quorum queues need the quorum_queue feature flag (enabled on a new 3.10 node; an upgraded
# node may have it off). Proven by declaring one when the project's venv is there.
rmq_ensure_quorum() {
    local flags
    if [ -x "$ROOT/.venv/bin/python" ] && rmq_declare_quorum 2>/dev/null; then
        return 0
    fi
    flags=$(rmq_cli rabbitmqctl -q list_feature_flags name state 2>/dev/null || true)
    if [[ ! $flags =~ quorum_queue[[:space:]]+enabled ]]; then
        log "enabling the quorum_queue feature flag"
        rmq_cli rabbitmqctl -q enable_feature_flag quorum_queue >/dev/null
    fi
    if [ -x "$ROOT/.venv/bin/python" ]; then
        rmq_declare_quorum || die "declaring a quorum queue failed"
    fi
}

stop_rabbitmq_processes() {
    local pid beam="" wrapper=""
    if pid=$(pid_from "$RMQ_PID_FILE") && pid_matches "$pid" beam; then
        beam=$pid
    fi
    if pid=$(pid_from "$RMQ_WRAPPER_PID_FILE") && pid_matches "$pid" rabbitmq-server; then
        wrapper=$pid
    fi
    # SIGTERM makes the VM shut the broker down cleanly; the wrapper script exits after it
    # (and forwards a SIGTERM of its own to the VM when the VM's pid file is not written yet).
    if [ -n "$beam" ]; then
        kill -TERM "$beam" 2>/dev/null || true
    elif [ -n "$wrapper" ]; then
        kill -TERM "$wrapper" 2>/dev/null || true
    fi
    if [ -n "$beam$wrapper" ] && ! wait_gone $beam $wrapper; then
        log "RabbitMQ did not stop in ${DEADLINE}s, killing it"
        kill -KILL $beam $wrapper 2>/dev/null || true
        wait_gone $beam $wrapper || true
    fi
    rm -f "$RMQ_PID_FILE" "$RMQ_WRAPPER_PID_FILE"
}

stop_rabbitmq() {
    local pid
    stop_rabbitmq_processes
    if pid=$(pid_from "$EPMD_PID_FILE") && pid_matches "$pid" epmd; then
        stop_pid "$pid"
    fi
    rm -f "$EPMD_PID_FILE"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

pg_installed() { [ -x "/usr/lib/postgresql/$PG_VERSION/bin/postgres" ] && command -v pg_ctlcluster >/dev/null; }

pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 1 >/dev/null 2>&1; }

pg_cluster_status() { pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $4}'; }

pg_configure() {
    [ -n "$(pg_cluster_status)" ] || pg_createcluster "$PG_VERSION" "$PG_CLUSTER" >/dev/null
    local port
    port=$(pg_conftool -s "$PG_VERSION" "$PG_CLUSTER" show port 2>/dev/null || true)
    [ "$port" = "$PG_PORT" ] || pg_conftool "$PG_VERSION" "$PG_CLUSTER" set port "$PG_PORT"
    local want
    # fsync/full_page_writes only protect against an operating-system crash; a killed or
    # restarted server still loses no committed transaction (synchronous_commit stays on).
    want=$(cat <<'EOF'
# Written by ganeti-dispatcher scripts/services.sh (local development and CI database).
listen_addresses = '127.0.0.1'
max_connections = 200
fsync = off
full_page_writes = off
EOF
)
    install -d -o postgres -g postgres "$PG_CONF_D"
    if [ "$(cat "$PG_CONF_D/ganeti-dispatcher.conf" 2>/dev/null)" != "$want" ]; then
        printf '%s\n' "$want" >"$PG_CONF_D/ganeti-dispatcher.conf"
        if [ "$(pg_cluster_status)" = online ]; then
            pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart -m fast 9>&-
        fi
    fi
}

as_postgres_psql() {
    (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" "$@")
}

pg_provision() {
    local exists db
    exists=$(as_postgres_psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")
    if [ "$exists" != 1 ]; then
        as_postgres_psql -c "CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD'"
    fi
    # DROP DATABASE ... WITH (FORCE) checks its right to signal every process in the
    # database, autovacuum workers (which have no role) included: without
    # pg_signal_backend a teardown that meets autovacuum fails at random.
    if [ "$(as_postgres_psql -tAc "SELECT pg_has_role('$DB_USER', 'pg_signal_backend', 'MEMBER')")" != t ]; then
        as_postgres_psql -c "GRANT pg_signal_backend TO $DB_USER"
    fi
    for db in "${DB_NAMES[@]}"; do
        exists=$(as_postgres_psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")
        if [ "$exists" != 1 ]; then
            as_postgres_psql -c "CREATE DATABASE $db OWNER $DB_USER"
        fi
    done
    # Password authentication over TCP must work, as the daemon uses it.
    if ! PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p "$PG_PORT" \
        -U "$DB_USER" -d "${DB_NAMES[1]}" -tAc 'SELECT 1' >/dev/null 2>&1; then
        # The role exists but with another password (or none): reset it.
        as_postgres_psql -c "ALTER ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD'"
        PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p "$PG_PORT" \
            -U "$DB_USER" -d "${DB_NAMES[1]}" -tAc 'SELECT 1' >/dev/null \
            || die "password login as $DB_USER over 127.0.0.1 fails (check pg_hba.conf)"
    fi
}

start_postgres() {
    pg_installed || apt_install "postgresql-$PG_VERSION" postgresql-client-"$PG_VERSION"
    pg_configure
    if [ "$(pg_cluster_status)" != online ]; then
        log "starting PostgreSQL $PG_VERSION"
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start 9>&-   # the server must not hold our lock
    fi
    local end=$((SECONDS + DEADLINE))
    until pg_ready; do
        [ "$SECONDS" -lt "$end" ] || die "PostgreSQL not ready after ${DEADLINE}s"
        sleep 0.1
    done
    pg_provision
}

stop_postgres() {
    pg_installed || return 0
    if [ "$(pg_cluster_status)" = online ]; then
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast
    fi
}

# ---------------------------------------------------------------------------------------------

status() {
    local rc=0 pid
    if rmq_running; then
        pid=$(pid_from "$RMQ_PID_FILE")
        echo "rabbitmq: running (pid $pid, 127.0.0.1:$RMQ_PORT)"
    else
        echo "rabbitmq: stopped"
        rc=3
    fi
    if pg_installed && pg_ready; then
        pid=$(head -n 1 "/var/lib/postgresql/$PG_VERSION/$PG_CLUSTER/postmaster.pid" 2>/dev/null || true)
        echo "postgresql: running (pid ${pid:-?}, 127.0.0.1:$PG_PORT)"
    else
        echo "postgresql: stopped"
        rc=3
    fi
    return "$rc"
}

print_env() {
    cat <<EOF
export DISPATCHER_DATABASE_URL=postgresql+asyncpg://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/${DB_NAMES[0]}
export DISPATCHER_TEST_DATABASE_URL=postgresql+asyncpg://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/${DB_NAMES[1]}
export DISPATCHER_AMQP_URL=amqp://guest:guest@127.0.0.1:$RMQ_PORT/
EOF
}

usage() {
    echo "usage: $0 start|stop|status|env|start-rabbitmq|stop-rabbitmq|start-postgres|stop-postgres" >&2
    exit 2
}

[ $# -eq 1 ] || usage
mkdir -p "$STATE_DIR"
case $1 in
    start | stop | start-* | stop-*)
        # One start/stop at a time: a concurrent start would take a booting broker for a stale one.
        exec 9>"$STATE_DIR/services.lock"
        flock -w 600 9 || die "another services.sh is still running"
        ;;
esac
case $1 in
    start) start_postgres; start_rabbitmq ;;
    stop) stop_rabbitmq; stop_postgres ;;
    start-rabbitmq) start_rabbitmq ;;
    stop-rabbitmq) stop_rabbitmq ;;
    start-postgres) start_postgres ;;
    stop-postgres) stop_postgres ;;
    status) status ;;
    env) print_env ;;
    *) usage ;;
esac
