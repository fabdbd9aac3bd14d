#!/usr/bin/env bash
# Scale-out demo (fresh Debian 12, as root): three `dispatcher run` daemons and a
# `dispatcher simulate` publisher on a three-node RabbitMQ cluster with quorum queues; the node
# leading the queues is stopped and started again, another node is killed with kill -9 and
# restarted, mid-stream. Prints one line per fault (consumption pause, remainder queued,
# lost=0 doubled=0) and the final comparison with `simulate --expect`.
#
# It runs tests/test_rabbitmq_cluster.py, which starts its own cluster
# (scripts/rabbitmq-cluster.sh) and stops it again, also on failure. RabbitMQ and PostgreSQL
# of scripts/services.sh are started and, unless KEEP_SERVICES=1, stopped at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    bash scripts/rabbitmq-cluster.sh stop || true
    if [ "${KEEP_SERVICES:-0}" != 1 ]; then
        bash scripts/services.sh stop || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash scripts/setup.sh
bash scripts/services.sh start
eval "$(bash scripts/services.sh env)"
.venv/bin/python -m pytest tests/test_rabbitmq_cluster.py -q -s -p no:cacheprovider </dev/null
