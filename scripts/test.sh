#!/usr/bin/env bash
# The project's one test command:
#   scripts/test.sh [pytest args...]
# Sets up .venv, starts RabbitMQ, PostgreSQL and the Ganeti sandbox, runs pytest (the tests/
# directory unless told otherwise), then stops everything it started, also on failure, unless
# KEEP_SERVICES=1. The exit code is pytest's; "no tests collected" (pytest's 5) is a failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "${KEEP_SERVICES:-0}" != 1 ]; then
        # the cluster test stops its own cluster; this catches a run killed half-way (not
        # with KEEP_SERVICES=1: the cluster may be another session's, running beside this one)
        if [ -d /run/ganeti-dispatcher-cluster ]; then
            bash scripts/rabbitmq-cluster.sh stop || { [ "$rc" != 0 ] || rc=1; }
        fi
        bash scripts/ganeti-sandbox.sh stop || { [ "$rc" != 0 ] || rc=1; }
        bash scripts/services.sh stop || { [ "$rc" != 0 ] || rc=1; }
    else
        echo "test.sh: KEEP_SERVICES=1, leaving the services and the Ganeti sandbox running" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash scripts/setup.sh
bash scripts/services.sh start
bash scripts/ganeti-sandbox.sh start
eval "$(bash scripts/services.sh env)"
eval "$(bash scripts/ganeti-sandbox.sh env)"

rc=0
.venv/bin/python -m pytest "$@" </dev/null || rc=$?
if [ "$rc" = 5 ]; then
    echo "test.sh: pytest collected no tests; counting that as a failure" >&2
    rc=1
fi
exit "$rc"
