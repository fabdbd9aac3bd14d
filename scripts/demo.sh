#!/usr/bin/env bash
# The main job, end to end on a fresh Debian 12 machine (as root): install what is missing,
# start RabbitMQ and PostgreSQL, migrate, run the daemon, feed it a simulated event stream
# and show the resulting states. Leaves nothing running (KEEP_SERVICES=1 keeps the services).
set -euo pipefail
cd "$(dirname "$0")/.."
VMS=${DEMO_VMS:-20}

bash scripts/setup.sh
bash scripts/services.sh start
eval "$(bash scripts/services.sh env)"
export DISPATCHER_HTTP_LISTEN=${DISPATCHER_HTTP_LISTEN:-127.0.0.1:9187}
DISPATCHER=.venv/bin/dispatcher

daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid"; wait "$daemon_pid" || true
  fi
  if [ "${KEEP_SERVICES:-0}" != 1 ]; then bash scripts/services.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

echo "== migrate"
$DISPATCHER migrate
echo "== start the daemon"
$DISPATCHER run > /tmp/dispatcher-demo.log 2>&1 &
daemon_pid=$!
deadline=$((SECONDS + 60))
until $DISPATCHER healthcheck >/dev/null 2>&1; do
  if ! kill -0 "$daemon_pid" 2>/dev/null; then cat /tmp/dispatcher-demo.log; exit 1; fi
  [ $SECONDS -lt $deadline ] || { echo "daemon not ready"; cat /tmp/dispatcher-demo.log; exit 1; }
  sleep 0.2
done
echo "== simulate $VMS VMs (shuffled, duplicated stream)"
expect=$(mktemp)
$DISPATCHER simulate --vms "$VMS" --seed 42 --expect "$expect"
echo "== wait until every server reached its expected state"
.venv/bin/python - "$expect" <<'PY'
import json, subprocess, sys, time
expected = json.load(open(sys.argv[1]))["servers"]
deadline = time.monotonic() + 120
while True:
    got = {str(s["id"]): s for s in json.loads(subprocess.check_output(
        [".venv/bin/dispatcher", "server", "list", "--all", "--json"]))}
    bad = [i for i, e in expected.items() if any(got.get(i, {}).get(k) != v for k, v in e.items())]
    if not bad:
        print(f"all {len(expected)} servers match the in-order state")
        break
    if time.monotonic() > deadline:
        sys.exit(f"{len(bad)} servers differ from the expected state: {bad[:10]}")
    time.sleep(0.5)
PY
rm -f "$expect"
echo "== servers"
$DISPATCHER server list --all
echo "== networks"
$DISPATCHER network list --all
echo "== metrics"
.venv/bin/python -c 'import sys, urllib.request; print("\n".join(l for l in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines() if l.startswith("dispatcher_messages_total")))' "http://$DISPATCHER_HTTP_LISTEN/metrics"
