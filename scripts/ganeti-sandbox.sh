#!/usr/bin/env bash
# A real one-node Ganeti 3.0 cluster for tests (Debian's ganeti, fake hypervisor, diskless and
# file disk templates), with all its daemons inside the network namespace "gnt".
# Recipe and background: ../shared/reference/ganeti-sandbox.md.
#
#   scripts/ganeti-sandbox.sh start     install (first time), init or restart, wait for RAPI
#   scripts/ganeti-sandbox.sh stop      stop every daemon and forwarder; nothing keeps running
#   scripts/ganeti-sandbox.sh status    exit 0 when RAPI answers, 3 otherwise
#   scripts/ganeti-sandbox.sh destroy   stop, wipe the cluster and the namespace (next start inits;
#                                       the RAPI cert and passwords are kept)
#   scripts/ganeti-sandbox.sh env       export lines for the tests (GANETI_SANDBOX_*)
#
# Reachable from the root namespace only through 127.0.0.1:5080 (a socat forwarder to the RAPI
# at 10.77.1.2:5080 in the namespace) and the veth 10.77.1.1 <-> 10.77.1.2. Inside the
# namespace, 127.0.0.1:5672 is bridged to the root namespace's RabbitMQ (127.0.0.1:5672) through
# a unix socket, so OS scripts (the progress monitor) can publish to the local broker.
#
# The OS "snf-image" (variant "default") declares the snf-image parameters; its create script
# reads /srv/ganeti/images/$OSP_IMG_ID (when that file exists) through the command prefix in
# /etc/ganeti/snf-image-monitor (written by `start` from $SANDBOX_MONITOR_CMD, removed when
# that is unset). The prefix is evaluated by bash with INSTANCE_NAME, IMAGE_FILE and IMAGE_SIZE
# (bytes) set; a literal <bytes> in it is replaced by the size. OS scripts only run for
# instances with disks (the "file" template), not for diskless ones.
set -euo pipefail

NS=gnt
NODE_IF=gnt0            # in the namespace: the node's primary interface and master netdev
NODE_PEER=gnt0p         # its peer, enslaved to the bridge
BRIDGE=br0              # the instances' NIC link
ROOT_IF=gntr            # root side of the path into the namespace
NS_IF=gntr-ns           # namespace side
NODE_IP=10.77.0.10
MASTER_IP=10.77.0.100
ROOT_IP=10.77.1.1
NS_IP=10.77.1.2
CLUSTER=cluster.gnt.test
NODE=node1.gnt.test
RAPI_PORT=5080
AMQP_PORT=5672

LIVE=/var/lib/ganeti-live   # our own state: cert, key, passwords
RUN=/run/ganeti-live        # our pid files and sockets
CA_FILE=$LIVE/rapi.crt
KEY_FILE=$LIVE/rapi.key
RAPI_USER=rapiadmin
RAPI_RO_USER=rapiro
PASSWORD_FILE=$LIVE/rapi-password
RO_PASSWORD_FILE=$LIVE/rapi-ro-password
FORWARD_PID_FILE=$RUN/rapi-forward.pid
AMQP_SOCK=$RUN/amqp.sock
AMQP_ROOT_PID_FILE=$RUN/amqp-bridge-root.pid
AMQP_NS_PID_FILE=$RUN/amqp-bridge-ns.pid

GNT_DATA=/var/lib/ganeti
GNT_RUN=/var/run/ganeti
DAEMON_UTIL=/usr/lib/ganeti/daemon-util
FILE_STORAGE=/srv/ganeti/file-storage
OS_DIR=/srv/ganeti/os/snf-image
IMAGES=/srv/ganeti/images
TEST_IMAGE=$IMAGES/debian-test
MONITOR_FILE=/etc/ganeti/snf-image-monitor

START_DAEMONS=(ganeti-noded ganeti-confd ganeti-wconfd ganeti-rapi ganeti-luxid ganeti-kvmd ganeti-mond)
LONG_RUNNING=(ganeti-noded ganeti-confd ganeti-wconfd ganeti-rapi ganeti-luxid ganeti-mond)
ALL_DAEMONS=("${START_DAEMONS[@]}" ganeti-metad)
DEADLINE=${SANDBOX_DEADLINE:-120}

log() { printf 'ganeti-sandbox: %s\n' "$*" >&2; }
die() { printf 'ganeti-sandbox: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
export DEBIAN_FRONTEND=noninteractive

# Commands inside the namespace. fd 9 (our lock) is not passed on to daemons.
nsx() { ip netns exec "$NS" "$@" 9>&-; }

# ---------------------------------------------------------------------------------------------
# small helpers

# has_addr [nsx] IFACE ADDR: the interface has ADDR (output captured first: no `| grep -q`
# under pipefail, where grep's early exit kills ip with SIGPIPE and turns the test false)
has_addr() {
    local out
    if [ "$1" = nsx ]; then
        out=$(nsx ip -o -4 addr show dev "$2" 2>/dev/null || true)
        shift
    else
        out=$(ip -o -4 addr show dev "$1" 2>/dev/null || true)
    fi
    [[ $out == *" $2/"* ]]
}

# alive PID: the process exists and is not a zombie (PID 1 here may reap orphans late, and
# kill -0 succeeds on a zombie)
alive() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# pid_from FILE: the pid in FILE if that process is alive
pid_from() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [ -n "$pid" ] && alive "$pid" || return 1
    printf '%s\n' "$pid"
}

ns_inode() { stat -L -c %i "/run/netns/$NS" 2>/dev/null; }

# in_ns PID: the process lives in our namespace
in_ns() {
    local want link
    want=$(ns_inode) || return 1
    link=$(readlink "/proc/$1/ns/net" 2>/dev/null) || return 1
    [ "$link" = "net:[$want]" ]
}

# wait_gone SECONDS PID...: true once every PID has exited
wait_gone() {
    local end=$((SECONDS + $1)) pid still
    shift
    while :; do
        still=0
        for pid in "$@"; do
            alive "$pid" && still=1 && break
        done
        [ "$still" = 0 ] && return 0
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.1
    done
}

# stop_pids PID...: SIGTERM, wait, SIGKILL what is left
stop_pids() {
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    if ! wait_gone 30 "$@"; then
        log "killing processes that ignored SIGTERM: $*"
        kill -KILL "$@" 2>/dev/null || true
        wait_gone 10 "$@" || true
    fi
}

# write_if_changed FILE MODE: stdin becomes FILE's content, rewritten in place only if it differs
# (in place, not renamed: /etc/netns/gnt/hosts is bind-mounted into running daemons)
write_if_changed() {
    local want
    want=$(cat)
    if [ ! -e "$1" ] || [ "$(cat "$1")" != "$want" ]; then
        printf '%s\n' "$want" >"$1"
    fi
    chmod "$2" "$1"
}

rapi_password() { cat "$PASSWORD_FILE"; }

# rapi_get PATH: GET over the forwarder, verifying the cert, as the write user
rapi_get() {
    curl -sS --fail --max-time 5 --cacert "$CA_FILE" -K - \
        "https://127.0.0.1:$RAPI_PORT$1" <<<"user = \"$RAPI_USER:$(rapi_password)\""
}

rapi_ready() { [ -s "$PASSWORD_FILE" ] && [ -s "$CA_FILE" ] && rapi_get /2/info >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------
# install

install_packages() {
    local missing=() policy=/usr/sbin/policy-rc.d
    [ -x /usr/sbin/gnt-cluster ] && [ -x "$DAEMON_UTIL" ] || missing+=(ganeti)
    command -v socat >/dev/null || missing+=(socat)
    command -v curl >/dev/null || missing+=(curl)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v ip >/dev/null || missing+=(iproute2)
    [ ${#missing[@]} -gt 0 ] || return 0
    log "installing ${missing[*]} (daemons are kept from starting in the root namespace)"
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# network namespace

setup_netns() {
    if [ -e "/run/netns/$NS" ] && ! ip netns exec "$NS" true 2>/dev/null; then
        ip netns delete "$NS" 2>/dev/null || rm -f "/run/netns/$NS"   # stale after a reboot
    fi
    [ -e "/run/netns/$NS" ] || ip netns add "$NS"
    nsx ip link set lo up

    if ! nsx ip link show "$NODE_IF" >/dev/null 2>&1; then
        ip link del "$NODE_IF" 2>/dev/null || true
        ip link add "$NODE_IF" type veth peer name "$NODE_PEER"
        ip link set "$NODE_IF" netns "$NS"
        ip link set "$NODE_PEER" netns "$NS"
    fi
    nsx ip link show "$BRIDGE" >/dev/null 2>&1 || nsx ip link add "$BRIDGE" type bridge
    nsx ip link set "$NODE_PEER" master "$BRIDGE"
    nsx ip link set "$BRIDGE" up
    nsx ip link set "$NODE_PEER" up
    nsx ip link set "$NODE_IF" up
    has_addr nsx "$NODE_IF" "$NODE_IP" || nsx ip addr add "$NODE_IP/24" dev "$NODE_IF"

    if ! ip link show "$ROOT_IF" >/dev/null 2>&1; then
        ip link add "$ROOT_IF" type veth peer name "$NS_IF"
        ip link set "$NS_IF" netns "$NS"
    fi
    has_addr "$ROOT_IF" "$ROOT_IP" || ip addr add "$ROOT_IP/30" dev "$ROOT_IF"
    ip link set "$ROOT_IF" up
    has_addr nsx "$NS_IF" "$NS_IP" || nsx ip addr add "$NS_IP/30" dev "$NS_IF"
    nsx ip link set "$NS_IF" up

    # Names inside the namespace (ip netns exec bind-mounts these over /etc/hosts and
    # /etc/resolv.conf). No nameserver: DNS lookups fail at once.
    local i short
    short=$(hostname -s 2>/dev/null || hostname)
    install -d /etc/netns/"$NS"
    {
        echo "# Written by ganeti-dispatcher scripts/ganeti-sandbox.sh"
        echo "127.0.0.1 localhost"
        echo "$NODE_IP $NODE node1 $short"
        echo "$MASTER_IP $CLUSTER cluster"
        for i in $(seq 1 20); do
            echo "10.77.0.$((20 + i)) inst$i.gnt.test inst$i"
        done
    } | write_if_changed "/etc/netns/$NS/hosts" 0644
    printf '# sandbox: no DNS\noptions timeout:1 attempts:1\n' \
        | write_if_changed "/etc/netns/$NS/resolv.conf" 0644
}

# ---------------------------------------------------------------------------------------------
# files: Ganeti defaults, storage paths, the snf-image OS, test image, RAPI users and cert

setup_files() {
    # RAPI listens on every address in the namespace (the package default binds 127.0.0.1 only)
    local defaults=/etc/default/ganeti
    if [ "$(grep -c '^RAPI_ARGS="--require-authentication"$' "$defaults" 2>/dev/null || true)" != 1 ]; then
        if grep -q '^RAPI_ARGS=' "$defaults" 2>/dev/null; then
            sed -i 's/^RAPI_ARGS=.*/RAPI_ARGS="--require-authentication"/' "$defaults"
        else
            echo 'RAPI_ARGS="--require-authentication"' >>"$defaults"
        fi
    fi
    install -d /etc/ganeti "$FILE_STORAGE" "$IMAGES" "$OS_DIR" "$LIVE" "$RUN"
    chmod 0700 "$LIVE"
    echo "$FILE_STORAGE" | write_if_changed /etc/ganeti/file-storage-paths 0644

    setup_os
    if [ ! -s "$TEST_IMAGE" ]; then
        head -c $((8 * 1024 * 1024)) /dev/urandom >"$TEST_IMAGE.tmp"
        mv "$TEST_IMAGE.tmp" "$TEST_IMAGE"
    fi
    if [ -n "${SANDBOX_MONITOR_CMD:-}" ]; then
        printf '%s\n' "$SANDBOX_MONITOR_CMD" | write_if_changed "$MONITOR_FILE" 0644
    else
        rm -f "$MONITOR_FILE"
    fi

    # RAPI credentials: random passwords, kept in root-only files
    local f
    for f in "$PASSWORD_FILE" "$RO_PASSWORD_FILE"; do
        if [ ! -s "$f" ]; then
            (umask 077 && openssl rand -hex 16 >"$f")
        fi
        chmod 0600 "$f"
    done

    # Self-signed cert whose SANs cover every way the RAPI is reached
    if [ ! -s "$CA_FILE" ] || [ ! -s "$KEY_FILE" ]; then
        (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
            -keyout "$KEY_FILE" -out "$CA_FILE" -subj "/CN=$CLUSTER" \
            -addext "subjectAltName=IP:127.0.0.1,IP:$NS_IP,IP:$MASTER_IP,IP:$NODE_IP,DNS:localhost,DNS:$CLUSTER,DNS:$NODE" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
            -addext "extendedKeyUsage=serverAuth" 2>/dev/null)
        chmod 0644 "$CA_FILE"
    fi
}

setup_os() {
    local s
    echo 20 | write_if_changed "$OS_DIR/ganeti_api_version" 0644
    echo default | write_if_changed "$OS_DIR/variants.list" 0644
    write_if_changed "$OS_DIR/parameters.list" 0644 <<'EOF'
img_id Image id (a file name in /srv/ganeti/images in this sandbox)
img_passwd Root password
img_format Image format
img_properties Image properties (JSON)
img_personality Files to inject (JSON)
EOF
    write_if_changed "$OS_DIR/create" 0755 <<'EOF'
#!/bin/bash
# Sandbox stand-in for snf-image's create: "deploys" /srv/ganeti/images/$OSP_IMG_ID by reading
# it (throttled) to /dev/null, through the command prefix in /etc/ganeti/snf-image-monitor when
# that file exists. The prefix is evaluated with INSTANCE_NAME, IMAGE_FILE and IMAGE_SIZE set;
# a literal <bytes> in it is replaced by IMAGE_SIZE.
set -euo pipefail
images=/srv/ganeti/images
monitor_file=/etc/ganeti/snf-image-monitor
img_id=${OSP_IMG_ID:-}
echo "snf-image(sandbox): instance ${INSTANCE_NAME:-?} img_id '${img_id}'"
if [ -z "$img_id" ] || [[ $img_id == */* ]] || [ ! -f "$images/$img_id" ]; then
    echo "snf-image(sandbox): no image file $images/$img_id, nothing to copy"
    exit 0
fi
IMAGE_FILE=$images/$img_id
IMAGE_SIZE=$(stat -L -c %s "$IMAGE_FILE")
export INSTANCE_NAME IMAGE_FILE IMAGE_SIZE
copy=(/usr/bin/python3 "$(dirname "$(readlink -f "$0")")/copy-image" "$IMAGE_FILE" /dev/null)
if [ -s "$monitor_file" ]; then
    prefix=$(cat "$monitor_file")
    prefix=${prefix//<bytes>/$IMAGE_SIZE}
    echo "snf-image(sandbox): copying $IMAGE_SIZE bytes through: $prefix"
    eval "$prefix \"\${copy[@]}\""
else
    echo "snf-image(sandbox): copying $IMAGE_SIZE bytes"
    "${copy[@]}"
fi
echo "snf-image(sandbox): done"
EOF
    write_if_changed "$OS_DIR/copy-image" 0755 <<'EOF'
#!/usr/bin/python3
"""copy-image SRC DEST: copy in 256 KiB chunks at about 2 MiB/s (one process, so the bytes
it has read show in /proc/PID/io as the copy goes on)."""
import sys
import time

CHUNK = 256 * 1024
RATE = 2 * 1024 * 1024  # bytes per second

src, dest = sys.argv[1], sys.argv[2]
start = time.monotonic()
done = 0
with open(src, "rb") as fin, open(dest, "wb") as fout:
    while True:
        buf = fin.read(CHUNK)
        if not buf:
            break
        fout.write(buf)
        done += len(buf)
        delay = start + done / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
EOF
    for s in import export rename verify; do
        printf '#!/bin/sh\n# sandbox snf-image: nothing to do\nexit 0\n' \
            | write_if_changed "$OS_DIR/$s" 0755
    done
}

install_rapi_users() {
    # Users file (reloaded by ganeti-rapi through inotify)
    install -d -o gnt-rapi -g gnt-masterd -m 0750 "$GNT_DATA/rapi" 2>/dev/null \
        || install -d -m 0750 "$GNT_DATA/rapi"
    {
        echo "# Written by ganeti-dispatcher scripts/ganeti-sandbox.sh"
        echo "$RAPI_USER $(cat "$PASSWORD_FILE") write"
        echo "$RAPI_RO_USER $(cat "$RO_PASSWORD_FILE")"
    } | write_if_changed "$GNT_DATA/rapi/users" 0640
    chown gnt-rapi:gnt-masterd "$GNT_DATA/rapi/users"
}

install_rapi_cert() {
    # Our cert as the RAPI's (gnt-cluster renew-crypto --rapi-certificate does not replace it
    # in 3.0.2). Sets PEM_CHANGED=1 when it changed: a running ganeti-rapi must be restarted.
    local pem=$GNT_DATA/rapi.pem want
    PEM_CHANGED=0
    want=$(cat "$KEY_FILE" "$CA_FILE")
    if [ -e "$pem" ] && [ "$(cat "$pem")" = "$want" ]; then
        return 0
    fi
    printf '%s\n' "$want" >"$pem.new"
    chown gnt-rapi:gnt-masterd "$pem.new"
    chmod 0440 "$pem.new"
    mv -f "$pem.new" "$pem"
    PEM_CHANGED=1
}

# ---------------------------------------------------------------------------------------------
# daemons

# ganeti_pid DAEMON: the live pid in DAEMON's pid file, if that process is DAEMON (a pid file
# left from an earlier boot may name a pid that is now some other program's)
ganeti_pid() {
    local pid cmdline
    pid=$(pid_from "$GNT_RUN/$1.pid") || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"/usr/sbin/$1"* ]] || return 1
    printf '%s\n' "$pid"
}

# daemon_pid DAEMON: as ganeti_pid, and running inside our namespace
daemon_pid() {
    local pid
    pid=$(ganeti_pid "$1") || return 1
    in_ns "$pid" || return 1
    printf '%s\n' "$pid"
}

# Pid files of dead processes go; a Ganeti daemon running outside our namespace is stopped.
clean_stale_daemons() {
    local d pid outside=()
    for d in "${ALL_DAEMONS[@]}"; do
        [ -e "$GNT_RUN/$d.pid" ] || continue
        if pid=$(ganeti_pid "$d"); then
            if ! in_ns "$pid"; then
                log "stopping $d (pid $pid), which runs outside namespace $NS"
                outside+=("$pid")
            fi
        else
            rm -f "$GNT_RUN/$d.pid"
        fi
    done
    if [ ${#outside[@]} -gt 0 ]; then
        stop_pids "${outside[@]}"
        for d in "${ALL_DAEMONS[@]}"; do
            ganeti_pid "$d" >/dev/null || rm -f "$GNT_RUN/$d.pid"
        done
    fi
}

start_daemons() {
    local d
    for d in "${START_DAEMONS[@]}"; do
        if [ "$d" = ganeti-kvmd ]; then
            nsx "$DAEMON_UTIL" check-and-start "$d" >/dev/null 2>&1 || true   # exits: no KVM
        else
            nsx "$DAEMON_UTIL" check-and-start "$d" >/dev/null || die "could not start $d"
        fi
    done
}

restart_rapi() {
    local pid
    if pid=$(daemon_pid ganeti-rapi); then
        stop_pids "$pid"
    fi
    rm -f "$GNT_RUN/ganeti-rapi.pid"
    nsx "$DAEMON_UTIL" check-and-start ganeti-rapi >/dev/null || die "could not start ganeti-rapi"
}

daemons_up() {
    local d
    for d in "${LONG_RUNNING[@]}"; do
        daemon_pid "$d" >/dev/null || return 1
    done
}

init_cluster() {
    log "initialising cluster $CLUSTER on $NODE"
    nsx gnt-cluster init --no-ssh-init --no-etc-hosts \
        --enabled-hypervisors=fake --enabled-disk-templates=diskless,file \
        --file-storage-dir="$FILE_STORAGE" --master-netdev="$NODE_IF" --master-netmask=24 \
        --nic-parameters=mode=bridged,link="$BRIDGE" --mac-prefix=aa:00:00 "$CLUSTER" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# forwarders (root namespace, by pid file)

forwarder_up() {
    local pid
    pid=$(pid_from "$1") || return 1
    [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == socat* ]]
}

start_forwarders() {
    if ! forwarder_up "$FORWARD_PID_FILE"; then
        setsid socat "TCP-LISTEN:$RAPI_PORT,bind=127.0.0.1,reuseaddr,fork" "TCP:$NS_IP:$RAPI_PORT" \
            </dev/null >/dev/null 2>>"$RUN/rapi-forward.log" 9>&- &
        echo $! >"$FORWARD_PID_FILE"
    fi
    if ! forwarder_up "$AMQP_ROOT_PID_FILE"; then
        rm -f "$AMQP_SOCK"
        setsid socat "UNIX-LISTEN:$AMQP_SOCK,fork,mode=0600" "TCP:127.0.0.1:$AMQP_PORT" \
            </dev/null >/dev/null 2>>"$RUN/amqp-bridge.log" 9>&- &
        echo $! >"$AMQP_ROOT_PID_FILE"
    fi
    if ! forwarder_up "$AMQP_NS_PID_FILE"; then
        setsid ip netns exec "$NS" socat "TCP-LISTEN:$AMQP_PORT,bind=127.0.0.1,reuseaddr,fork" \
            "UNIX-CONNECT:$AMQP_SOCK" </dev/null >/dev/null 2>>"$RUN/amqp-bridge.log" 9>&- &
        echo $! >"$AMQP_NS_PID_FILE"
    fi
}

# stop_forwarder PIDFILE: the socat and its per-connection children (its process group)
stop_forwarder() {
    local pid
    if forwarder_up "$1"; then
        pid=$(pid_from "$1")
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        wait_gone 10 "$pid" || kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

# ---------------------------------------------------------------------------------------------
# commands

do_start() {
    local t0=$SECONDS
    if [ -s "$GNT_DATA/config.data" ] && daemons_up && forwarder_up "$FORWARD_PID_FILE" \
        && forwarder_up "$AMQP_ROOT_PID_FILE" && forwarder_up "$AMQP_NS_PID_FILE" && rapi_ready; then
        if [ -n "${SANDBOX_MONITOR_CMD:-}" ]; then
            printf '%s\n' "$SANDBOX_MONITOR_CMD" | write_if_changed "$MONITOR_FILE" 0644
        else
            rm -f "$MONITOR_FILE"
        fi
        return 0
    fi
    install_packages
    setup_netns
    setup_files
    clean_stale_daemons

    if [ ! -s "$GNT_DATA/config.data" ]; then
        install -d "$GNT_DATA"
        install_rapi_users
        init_cluster            # also starts the daemons, inside the namespace
        install_rapi_cert       # init refuses a pre-existing rapi.pem, so after it
        if [ "$PEM_CHANGED" = 1 ]; then
            restart_rapi
        fi
    else
        install_rapi_users
        install_rapi_cert
        if [ "$PEM_CHANGED" = 1 ] && daemon_pid ganeti-rapi >/dev/null; then
            restart_rapi
        fi
        start_daemons
        if ! has_addr nsx "$NODE_IF" "$MASTER_IP"; then
            nsx gnt-cluster activate-master-ip >/dev/null
        fi
    fi
    start_forwarders

    local end=$((SECONDS + DEADLINE))
    until rapi_ready; do
        [ "$SECONDS" -lt "$end" ] || die "RAPI not answering on 127.0.0.1:$RAPI_PORT after ${DEADLINE}s (see /var/log/ganeti/rapi-daemon.log)"
        sleep 0.2
    done
    log "cluster $CLUSTER up, RAPI at https://127.0.0.1:$RAPI_PORT ($((SECONDS - t0))s)"
}

do_stop() {
    local d pid pids=()
    stop_forwarder "$FORWARD_PID_FILE"
    stop_forwarder "$AMQP_NS_PID_FILE"
    stop_forwarder "$AMQP_ROOT_PID_FILE"
    rm -f "$AMQP_SOCK"
    for d in "${ALL_DAEMONS[@]}"; do
        if pid=$(ganeti_pid "$d"); then
            pids+=("$pid")
        fi
    done
    stop_pids "${pids[@]}"
    for d in "${ALL_DAEMONS[@]}"; do
        ganeti_pid "$d" >/dev/null || rm -f "$GNT_RUN/$d.pid"
    done
    # Whatever else still runs in the namespace (job processes, OS scripts, ...), by pid.
    if [ -e "/run/netns/$NS" ]; then
        mapfile -t pids < <(ip netns pids "$NS" 2>/dev/null || true)
        if [ ${#pids[@]} -gt 0 ]; then
            log "stopping leftover processes in namespace $NS: ${pids[*]}"
            stop_pids "${pids[@]}"
        fi
    fi
}

do_destroy() {
    do_stop
    ip link del "$ROOT_IF" 2>/dev/null || true
    if [ -e "/run/netns/$NS" ]; then
        ip netns delete "$NS" 2>/dev/null || rm -f "/run/netns/$NS"
    fi
    rm -rf /etc/netns/"$NS"
    # The cluster's state; ensure-dirs recreates the layout on the next start.
    if [ -d "$GNT_DATA" ]; then
        find "$GNT_DATA" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
    fi
    # Kept: the RAPI cert and passwords in $LIVE (clients keep working) and the test image.
    rm -rf "$FILE_STORAGE" "$RUN" "$MONITOR_FILE"
    log "cluster destroyed"
}

do_status() {
    local d f pid rc=0
    for d in "${ALL_DAEMONS[@]}"; do
        if pid=$(daemon_pid "$d"); then
            echo "$d: running (pid $pid)"
        else
            echo "$d: stopped"
        fi
    done
    for f in "$FORWARD_PID_FILE" "$AMQP_ROOT_PID_FILE" "$AMQP_NS_PID_FILE"; do
        if forwarder_up "$f"; then
            echo "$(basename "$f" .pid): running (pid $(pid_from "$f"))"
        else
            echo "$(basename "$f" .pid): stopped"
        fi
    done
    if rapi_ready; then
        echo "rapi: answering at https://127.0.0.1:$RAPI_PORT"
    else
        echo "rapi: not answering"
        rc=3
    fi
    return "$rc"
}

do_env() {
    cat <<EOF
export GANETI_SANDBOX_HOST=127.0.0.1
export GANETI_SANDBOX_PORT=$RAPI_PORT
export GANETI_SANDBOX_USER=$RAPI_USER
export GANETI_SANDBOX_PASSWORD_FILE=$PASSWORD_FILE
export GANETI_SANDBOX_RO_USER=$RAPI_RO_USER
export GANETI_SANDBOX_RO_PASSWORD_FILE=$RO_PASSWORD_FILE
export GANETI_SANDBOX_CA_FILE=$CA_FILE
export GANETI_SANDBOX_CLUSTER=$CLUSTER
export GANETI_SANDBOX_NODE=$NODE
export GANETI_SANDBOX_NETNS=$NS
export GANETI_SANDBOX_QUEUE_DIR=$GNT_DATA/queue
EOF
}

usage() {
    echo "usage: $0 start|stop|status|destroy|env" >&2
    exit 2
}

[ $# -eq 1 ] || usage
case $1 in
    start | stop | destroy)
        install -d "$RUN"
        exec 9>"$RUN/sandbox.lock"
        flock -w 600 9 || die "another ganeti-sandbox.sh is still running"
        ;;
esac
case $1 in
    start) do_start ;;
    stop) do_stop ;;
    destroy) do_destroy ;;
    status) do_status ;;
    env) do_env ;;
    *) usage ;;
esac
