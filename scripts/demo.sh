#!/usr/bin/env bash
# The main job, end to end on a fresh Debian 12 machine (as root). Installs what is missing
# (scripts/setup.sh, services.sh, ganeti-sandbox.sh), then:
#
#   1. simulated stream: RabbitMQ + PostgreSQL + `dispatcher run`, fed a shuffled, duplicated
#      event stream by `dispatcher simulate`; checks every server reached the in-order state.
#   2. the whole loop on a real one-node Ganeti 3.0 cluster (the sandbox, in netns gnt):
#      `dispatcher eventd` reads Ganeti's job queue and publishes, `progress-monitor` reports
#      the image copy from inside the OS create script, `dispatcher run` applies it all; the
#      CLI adds the backend, creates a network and 3 servers, stops one, reboots one, removes
#      one, and the servers' states are shown as they change. Then everything is removed.
#
# Leaves nothing running: the daemons it starts are stopped by pid, and the Ganeti sandbox,
# RabbitMQ and PostgreSQL are stopped (KEEP_SERVICES=1 keeps them up). Logs of a failed run
# stay in the directory it names.
#
#   DEMO_VMS (8)        servers in the simulated stream
#   DEMO_DEADLINE (600) seconds each waiting step may take
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VMS=${DEMO_VMS:-8}
DEADLINE=${DEMO_DEADLINE:-600}
DISPATCHER=$ROOT/.venv/bin/dispatcher
PY=$ROOT/.venv/bin/python
LOGDIR=$(mktemp -d /tmp/dispatcher-demo.XXXXXX)
IMAGES=/srv/ganeti/images
SUBNET=10.77.4.0/24        # the sandbox's instance networks; the tests use 10.77.5.0 and up

daemon_pid=""
eventd_pid=""
watch_pid=""
loop_prefix=""
image_file=""
sandbox_touched=0

# alive PID: exists and is not a zombie
alive() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# stop_pid PID: SIGTERM, wait up to 60 s, SIGKILL as a last resort; reaps our child
stop_pid() {
    local pid=$1 end=$((SECONDS + 60))
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    while alive "$pid"; do
        if [ "$SECONDS" -ge "$end" ]; then
            echo "demo: pid $pid ignored SIGTERM, killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.1
    done
    wait "$pid" 2>/dev/null || true
}

# wait_log FILE PID TEXT: until FILE contains TEXT; fails when PID exits or on the deadline
wait_log() {
    local end=$((SECONDS + 120))
    until grep -q -- "$3" "$1" 2>/dev/null; do
        alive "$2" || { tail -n 30 "$1" >&2; echo "demo: pid $2 exited" >&2; return 1; }
        [ "$SECONDS" -lt "$end" ] || { tail -n 30 "$1" >&2; echo "demo: no '$3' in $1" >&2; return 1; }
        sleep 0.2
    done
}

# wait_healthy PID LOG: until `dispatcher healthcheck` passes (the daemon is consuming)
wait_healthy() {
    local end=$((SECONDS + 120))
    until $DISPATCHER healthcheck >/dev/null 2>&1; do
        alive "$1" || { tail -n 30 "$2" >&2; echo "demo: daemon exited" >&2; return 1; }
        [ "$SECONDS" -lt "$end" ] || { echo "demo: daemon not ready" >&2; return 1; }
        sleep 0.2
    done
}

nsx() { ip netns exec gnt "$@"; }

# remove_cluster_leftovers PREFIX: instances PREFIX-* and networks PREFIX-net-* on the sandbox
# (after a failure; a successful run has removed them through the CLI already)
remove_cluster_leftovers() {
    local name
    bash scripts/ganeti-sandbox.sh status >/dev/null 2>&1 || return 0
    for name in $(nsx gnt-instance list --no-headers -o name 2>/dev/null | grep "^$1-" || true); do
        echo "demo: removing leftover instance $name" >&2
        nsx gnt-instance remove -f --shutdown-timeout=0 "$name" >/dev/null 2>&1 || true
    done
    for name in $(nsx gnt-network list --no-headers -o name 2>/dev/null | grep "^$1-net-" || true); do
        echo "demo: removing leftover network $name" >&2
        nsx gnt-network disconnect "$name" >/dev/null 2>&1 || true
        nsx gnt-network remove "$name" >/dev/null 2>&1 || true
    done
}

# delete_queues PREFIX: the demo's queues on the broker (each run has its own prefix)
delete_queues() {
    "$PY" - "$1" "$DISPATCHER_AMQP_URL" <<'PY' || true
import asyncio, sys
import aio_pika

async def main(prefix: str, url: str) -> None:
    conn = await aio_pika.connect(url, timeout=10)
    async with conn:
        for stream in ("op", "net", "network", "progress"):
            for name in (f"{prefix}-events-{stream}", f"{prefix}-events-{stream}-dl"):
                channel = await conn.channel()
                try:
                    await channel.queue_delete(name)
                except Exception:
                    pass

asyncio.run(main(sys.argv[1], sys.argv[2]))
PY
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ "$rc" != 0 ]; then
        for f in "$LOGDIR"/*.log; do
            [ -s "$f" ] && { echo "--- $f (tail)"; tail -n 25 "$f"; }
        done
        echo "demo: FAILED (exit $rc); logs in $LOGDIR" >&2
    fi
    stop_pid "$watch_pid"
    stop_pid "$eventd_pid"
    [ -z "$loop_prefix" ] || remove_cluster_leftovers "$loop_prefix"
    stop_pid "$daemon_pid"
    [ -z "$loop_prefix" ] || delete_queues "$loop_prefix"
    [ -z "$image_file" ] || rm -f "$image_file"
    if [ "${KEEP_SERVICES:-0}" = 1 ]; then
        # still running: take the progress-monitor hook out of the sandbox OS again
        [ "$sandbox_touched" = 0 ] || env -u SANDBOX_MONITOR_CMD bash scripts/ganeti-sandbox.sh start >/dev/null 2>&1
        echo "demo: KEEP_SERVICES=1, leaving RabbitMQ, PostgreSQL and the Ganeti sandbox running" >&2
    else
        [ "$sandbox_touched" = 0 ] || bash scripts/ganeti-sandbox.sh stop >/dev/null 2>&1 || rc=1
        bash scripts/services.sh stop >/dev/null 2>&1 || rc=1
    fi
    [ "$rc" != 0 ] || rm -rf "$LOGDIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The watcher: re-prints the servers (or networks) as a table whenever they change, until a
# condition over them holds. `S`/`N`: the documents by name (`server/network list --all
# --json`); `E`: the environment.
cat >"$LOGDIR/watch.py" <<'PY'
import json, os, subprocess, sys, time

kind, cond, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
exe = os.environ["DISPATCHER"]
t0 = float(os.environ.get("DEMO_T0", time.time()))
deadline = time.monotonic() + timeout


def fetch():
    out = subprocess.run([exe, kind, "list", "--all", "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"dispatcher {kind} list: {out.stderr.strip()}")
    return json.loads(out.stdout)


def cells(d):
    if kind == "network":
        b = d["backends"][0] if d["backends"] else {}
        return [d["id"], d["name"], d["instance"], d["subnet"], d["state"],
                b.get("operstate", "-"), d["action"] or "-", "yes" if d["deleted"] else "no"]
    job = "-"
    if d["backendjobid"] is not None:
        job = f'{d["backendjobid"]} {(d["backendopcode"] or "").removeprefix("OP_INSTANCE_")} {d["backendjobstatus"]}'
    pct = d["buildpercentage"]
    return [d["id"], d["name"], d["instance"], d["operstate"], d["action"] or "-",
            "-" if pct is None else f"{pct}%", job,
            ",".join(n["ipv4"] or "?" for n in d["nics"]) or "-", "yes" if d["deleted"] else "no"]


heads = (["ID", "NAME", "INSTANCE", "SUBNET", "STATE", "ON CLUSTER", "ACTION", "DELETED"]
         if kind == "network" else
         ["ID", "NAME", "INSTANCE", "OPERSTATE", "ACTION", "BUILD", "LAST JOB", "IPV4", "DELETED"])
last = None
while True:
    docs = fetch()
    rows = [[str(c) for c in cells(d)] for d in docs]
    if rows != last:
        widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
        print(f"-- t+{time.time() - t0:5.1f}s")
        for r in [heads, *rows] if rows else [[f"(no {kind}s yet)"]]:
            print("   " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        sys.stdout.flush()
        last = rows
    by_name = {d["name"]: d for d in docs}
    if eval(f"({cond})", {"S": by_name, "N": by_name, "E": os.environ}):
        break
    if time.monotonic() > deadline:
        sys.exit(f"timed out after {timeout:.0f} s waiting for: {cond}")
    time.sleep(0.2)
PY
export DISPATCHER
# show_until_bg KIND COND: the watcher in the background while the actions are issued;
# wait_shown waits for it (and fails when it did)
show_until_bg() {
    "$PY" "$LOGDIR/watch.py" "$@" "$DEADLINE" &
    watch_pid=$!
}
wait_shown() {
    local pid=$watch_pid
    wait "$pid"
    watch_pid=""
}
# field ID KEY: one field of `server show ID --json`
field() { $DISPATCHER server show "$1" --json | "$PY" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$2"; }

echo "== install and start what is missing (.venv, RabbitMQ, PostgreSQL)"
bash scripts/setup.sh
bash scripts/services.sh start
eval "$(bash scripts/services.sh env)"
export DISPATCHER_HTTP_LISTEN=${DISPATCHER_HTTP_LISTEN:-127.0.0.1:9187}

# ---------------------------------------------------------------------------------------------
echo
echo "==== 1. a simulated event stream ($VMS servers, shuffled and duplicated)"
$DISPATCHER migrate 2>>"$LOGDIR/migrate.log"
$DISPATCHER run >"$LOGDIR/run-simulate.log" 2>&1 &
daemon_pid=$!
wait_healthy "$daemon_pid" "$LOGDIR/run-simulate.log"
expect=$LOGDIR/expect.json
$DISPATCHER simulate --vms "$VMS" --seed 42 --expect "$expect"
"$PY" - "$expect" <<'PY'
import collections, json, os, subprocess, sys, time
expected = json.load(open(sys.argv[1]))["servers"]
deadline = time.monotonic() + 120
while True:
    got = {str(s["id"]): s for s in json.loads(subprocess.check_output(
        [os.environ["DISPATCHER"], "server", "list", "--all", "--json"]))}
    bad = [i for i, e in expected.items() if any(got.get(i, {}).get(k) != v for k, v in e.items())]
    if not bad:
        states = collections.Counter(got[i]["operstate"] for i in expected)
        print(f"all {len(expected)} servers match the in-order state: "
              + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
        break
    if time.monotonic() > deadline:
        sys.exit(f"{len(bad)} servers differ from the expected state: {bad[:10]}")
    time.sleep(0.5)
PY
.venv/bin/python -c 'import sys, urllib.request; print("\n".join(l for l in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines() if l.startswith("dispatcher_messages_total")))' "http://$DISPATCHER_HTTP_LISTEN/metrics"
stop_pid "$daemon_pid"
daemon_pid=""

# ---------------------------------------------------------------------------------------------
echo
echo "==== 2. the whole loop on a real Ganeti 3.0 cluster (scripts/ganeti-sandbox.sh)"
sandbox_touched=1
# Ganeti's OS create script copies the image through progress-monitor (inside netns gnt; it
# reaches RabbitMQ through the sandbox's bridge on the namespace's 127.0.0.1:5672).
SANDBOX_MONITOR_CMD="$DISPATCHER progress-monitor -i \"\$INSTANCE_NAME\" -r <bytes> --interval 1 --" \
    bash scripts/ganeti-sandbox.sh start
eval "$(bash scripts/ganeti-sandbox.sh env)"
# an image of 24 MiB: the sandbox copies 2 MiB/s, so each build shows some progress
image=demo-image
image_file=$IMAGES/$image
truncate -s 24M "$image_file"

# a database and a prefix of its own: instances are $prefix-<id>, queues $prefix-events-*
export DISPATCHER_DATABASE_URL=${DISPATCHER_DATABASE_URL%/*}/dispatcher_demo
"$PY" - "$DISPATCHER_DATABASE_URL" <<'PY'
import asyncio, sys
import asyncpg

base, db = sys.argv[1].replace("postgresql+asyncpg://", "postgresql://").rsplit("/", 1)

async def main() -> None:
    conn = await asyncpg.connect(f"{base}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{db}"')
    finally:
        await conn.close()

asyncio.run(main())
PY
loop_prefix=demo$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')
export DISPATCHER_PREFIX=$loop_prefix
echo "database dispatcher_demo (fresh), prefix $loop_prefix"
$DISPATCHER migrate 2>>"$LOGDIR/migrate.log"

echo "== dispatcher run (root namespace) and dispatcher eventd (inside netns gnt, as on a master)"
$DISPATCHER run >"$LOGDIR/run-loop.log" 2>&1 &
daemon_pid=$!
wait_healthy "$daemon_pid" "$LOGDIR/run-loop.log"     # it has declared the queues eventd's messages are routed to
env DISPATCHER_HTTP_LISTEN= \
    DISPATCHER_EVENTD_RAPI_USERNAME="$GANETI_SANDBOX_RO_USER" \
    DISPATCHER_EVENTD_RAPI_PASSWORD_FILE="$GANETI_SANDBOX_RO_PASSWORD_FILE" \
    DISPATCHER_EVENTD_RAPI_CA_FILE="$GANETI_SANDBOX_CA_FILE" \
    ip netns exec "$GANETI_SANDBOX_NETNS" "$DISPATCHER" eventd >"$LOGDIR/eventd.log" 2>&1 &
eventd_pid=$!
wait_log "$LOGDIR/eventd.log" "$eventd_pid" " watching "
echo "run: pid $daemon_pid; eventd: pid $eventd_pid ($(grep -o 'watching .*' "$LOGDIR/eventd.log" | head -n 1))"

echo "== backend add, update-resources"
backend=$($DISPATCHER backend add "$GANETI_SANDBOX_CLUSTER" --host "$GANETI_SANDBOX_HOST" \
    --port "$GANETI_SANDBOX_PORT" --username "$GANETI_SANDBOX_USER" \
    --password-file "$GANETI_SANDBOX_PASSWORD_FILE" --ca-file "$GANETI_SANDBOX_CA_FILE")
$DISPATCHER backend update-resources "$backend" >/dev/null
$DISPATCHER backend list
flavor=$($DISPATCHER flavor create --cpu 1 --ram 128 --disk 1 --disk-template file)

export DEMO_T0
echo "== network create lan $SUBNET (ACTIVE once eventd reports Ganeti's add and connect jobs)"
DEMO_T0=$(date +%s.%N)
show_until_bg network 'len(N) == 1 and all(n["state"] == "ACTIVE" for n in N.values())'
net=$($DISPATCHER network create lan --subnet "$SUBNET" --gateway "${SUBNET%.0/24}.1")
wait_shown

echo "== server create web1 web2 web3 (BUILD with the image copy's progress, then STARTED)"
DEMO_T0=$(date +%s.%N)
show_until_bg server 'len(S) == 3 and all(s["operstate"] == "STARTED" for s in S.values())'
ids=()
for name in web1 web2 web3; do
    ids+=("$($DISPATCHER server create "$name" --flavor "$flavor" --image "$image" --network "$net")")
done
wait_shown

echo "== stop web1, reboot web2, remove web3"
DEMO_T0=$(date +%s.%N)
show_until_bg server 'S["web1"]["operstate"] == "STOPPED"
    and (S["web2"]["operstate"], S["web2"]["backendopcode"], S["web2"]["backendjobstatus"]) == ("STARTED", "OP_INSTANCE_REBOOT", "success")
    and (S["web3"]["operstate"], S["web3"]["deleted"]) == ("DESTROYED", True)'
stop_job=$($DISPATCHER server stop "${ids[0]}")
reboot_job=$($DISPATCHER server reboot "${ids[1]}")
remove_job=$($DISPATCHER server remove "${ids[2]}")
wait_shown
for check in "${ids[0]} $stop_job" "${ids[1]} $reboot_job" "${ids[2]} $remove_job"; do
    set -- $check
    [ "$(field "$1" backendjobid)" = "$2" ] || { echo "demo: server $1's last job is not $2" >&2; exit 1; }
done
echo "checked: the last jobs are the stop ($stop_job), reboot ($reboot_job) and remove ($remove_job) jobs"

echo "== tidy up through the CLI: remove web1 and web2, then the network"
DEMO_T0=$(date +%s.%N)
show_until_bg server 'all(s["deleted"] and s["operstate"] == "DESTROYED" for s in S.values())'
$DISPATCHER server remove "${ids[0]}" >/dev/null
$DISPATCHER server remove "${ids[1]}" >/dev/null
wait_shown
DEMO_T0=$(date +%s.%N)
show_until_bg network 'all(n["deleted"] for n in N.values())'
$DISPATCHER network remove "$net" >/dev/null
wait_shown

echo "== the database as the CLI shows it"
$DISPATCHER server list --all
left=$(nsx gnt-instance list --no-headers -o name | grep -c "^$loop_prefix-" || true)
echo "instances of $loop_prefix left on the cluster: $left"
[ "$left" = 0 ]
echo "== done: every state above came from Ganeti's own job files through eventd"
