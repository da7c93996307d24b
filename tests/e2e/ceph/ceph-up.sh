#!/bin/bash
# A one-node Ceph cluster for tests: one monitor, one OSD (memstore), no mgr,
# loopback only, all state in one folder. Idempotent.
#
#   ceph-up.sh up      start (or check) the cluster; prints the store URL
#   ceph-up.sh down    stop it and remove its folder
#   ceph-up.sh status  exit 0 if a put succeeds
#   ceph-up.sh url     the store URL (rados://POOL?conf=...&id=admin)
#   ceph-up.sh purge NS   remove every object of namespace NS of the pool;
#                         prints how many there were
#   ceph-up.sh objects    how many objects the pool holds, all namespaces
#
# CEPH_DIR (default /var/tmp/archip-ceph), CEPH_POOL (default archip),
# CEPH_ADDR (the address the monitor and the OSD listen on, default 127.0.0.1;
# the multi-node lab runs a cluster on its bridge, in its controller's namespace),
# CEPH_OSD_BYTES (memstore size, default 12 GiB: it lives in the OSD's memory,
# about 2.2 x what is stored). CEPH_STORE=bluestore puts the OSD on a sparse file.
# Facts behind the settings: ../../../../shared/reference/ceph-rados.md
set -euo pipefail

DIR=${CEPH_DIR:-/var/tmp/archip-ceph}
POOL=${CEPH_POOL:-archip}
OSD_BYTES=${CEPH_OSD_BYTES:-12884901888}
STORE=${CEPH_STORE:-memstore}
ADDR=${CEPH_ADDR:-127.0.0.1}
CONF=$DIR/ceph.conf
export CEPH_CONF=$CONF

log() { echo "ceph-up: $*" >&2; }

url() { echo "rados://$POOL?conf=$CONF&id=admin"; }

alive() {   # pid file -> running?
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

healthy() {
    alive "$DIR/run/mon.a.pid" && alive "$DIR/run/osd.0.pid" &&
        echo ok | timeout 20 rados -p "$POOL" put archip-ceph-up-probe - 2>/dev/null &&
        timeout 10 rados -p "$POOL" rm archip-ceph-up-probe 2>/dev/null
}

need() {
    local missing=()
    for t in ceph-mon ceph-osd ceph ceph-authtool monmaptool rados; do
        command -v "$t" >/dev/null || missing+=("$t")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "missing: ${missing[*]} (apt-get install ceph-mon ceph-osd ceph-common)"
        exit 2
    fi
    [ "$(id -u)" = 0 ] || { log "must run as root"; exit 2; }
}

down() {
    for p in "$DIR"/run/*.pid; do
        [ -f "$p" ] || continue
        # SIGKILL: memstore writes every object to its folder on a clean stop.
        kill -9 "$(cat "$p")" 2>/dev/null || true
    done
    # Wait until the ports are free for the next bring-up.
    for _ in $(seq 50); do
        pgrep -f "ceph-(mon|osd) .*-c $CONF" >/dev/null || break
        sleep 0.1
    done
    rm -rf "$DIR"
}

write_conf() {
    local fsid=$1
    cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon host = [v2:$ADDR:3300,v1:$ADDR:6789]
mon initial members = a
public addr = $ADDR
cluster addr = $ADDR
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
crash dir = $DIR/crash
mon cluster log file = $DIR/log/cluster.log
mon data = $DIR/mon/\$name
osd data = $DIR/osd/\$name
osd objectstore = $STORE
memstore device bytes = $OSD_BYTES
bluestore block create = true
bluestore block size = 21474836480
bluestore cache size = 268435456
osd memory target = 1073741824
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool delete = true
# A test cluster on a developer's nearly full disk: the monitor's default
# (refuse below 5% free: ceph-mon --mkfs exits 28) stops make test for nothing.
mon data avail crit = 1
mon data avail warn = 2
mon allow pool size one = true
mon mgr mkfs grace = 86400
mon warn on pool no redundancy = false
osd max object name len = 1024
client mount timeout = 30
rados osd op timeout = 60
rados mon op timeout = 30
objecter inflight op bytes = 1073741824
objecter inflight ops = 4096
[mon]
keyring = $DIR/mon/\$name/keyring
[osd]
keyring = $DIR/osd/\$name/keyring
[client]
keyring = $DIR/client.admin.keyring
EOF
}

up() {
    need
    if [ -f "$CONF" ] && healthy; then url; return 0; fi
    if [ -d "$DIR" ]; then log "cleaning a broken cluster in $DIR"; down; fi
    local t0=$(date +%s.%N)
    mkdir -p "$DIR"/{run,log,crash,mon/mon.a,osd/osd.0}
    local fsid=$(cat /proc/sys/kernel/random/uuid)
    write_conf "$fsid"

    ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/client.admin.keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/client.admin.keyring" >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "[v2:$ADDR:3300,v1:$ADDR:6789]" "$DIR/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" ||
        { rc=$?; log "ceph-mon --mkfs failed (exit $rc; 28: no space); see $DIR/log/mon.a.log"; exit 1; }
    cp "$DIR/mon.keyring" "$DIR/mon/mon.a/keyring"
    ceph-mon -c "$CONF" -i a || { rc=$?; log "ceph-mon failed to start (exit $rc); see $DIR/log/mon.a.log"; exit 1; }

    local uuid=$(cat /proc/sys/kernel/random/uuid)
    local key=$(ceph-authtool --gen-print-key)
    local id=$(echo "{\"cephx_secret\": \"$key\"}" | timeout 60 ceph osd new "$uuid" -i - 2>/dev/null)
    [ "$id" = 0 ] || { log "ceph osd new gave '$id'"; exit 1; }
    ceph-authtool --create-keyring "$DIR/osd/osd.0/keyring" --name osd.0 --add-key "$key" >/dev/null
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" 2>>"$DIR/log/osd-mkfs.log"
    ceph-osd -c "$CONF" -i 0 2>>"$DIR/log/osd-start.log"

    timeout 60 ceph osd pool create "$POOL" 8 8 >/dev/null 2>&1
    timeout 60 ceph osd pool application enable "$POOL" archip >/dev/null 2>&1 || true
    for _ in $(seq 120); do
        healthy && break
        sleep 0.5
    done
    healthy || { log "cluster did not come up; logs in $DIR/log"; exit 1; }
    log "up in $(echo "$(date +%s.%N) - $t0" | bc 2>/dev/null || echo '?') s: $(url)"
    url
}

purge() {   # $1: namespace
    local ns=$1 list
    [ -n "$ns" ] || { log "purge: which namespace?"; exit 2; }
    list=$(timeout 120 rados -p "$POOL" -N "$ns" ls) || { log "purge: cannot list namespace $ns"; exit 1; }
    [ -z "$list" ] && { echo 0; return 0; }
    printf '%s\n' "$list" | timeout 600 xargs -d '\n' rados -p "$POOL" -N "$ns" rm ||
        { log "purge: removing the objects of namespace $ns failed"; exit 1; }
    printf '%s\n' "$list" | wc -l
}

case "${1:-}" in
    up) up ;;
    purge) purge "${2:-}" ;;
    objects) timeout 120 rados -p "$POOL" --all ls | wc -l ;;
    down) down ;;
    status) [ -f "$CONF" ] && healthy ;;
    url) url ;;
    *) echo "usage: $0 up|down|status|url|purge NS|objects" >&2; exit 2 ;;
esac
