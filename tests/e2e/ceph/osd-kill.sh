#!/bin/bash
# The OSD dies under a fill: kill -9 of the (only) OSD while `archip fill` runs,
# then a restart. Needs an OSD that keeps its data over kill -9, so bluestore:
#
#   CEPH_STORE=bluestore tests/e2e/ceph/ceph-up.sh up
#   tests/e2e/ceph/osd-kill.sh BIN_DIR rados://POOL?conf=...&id=...
#
# Round 1: the OSD is killed and restarted 2 s later while the fill waits; the
#   fill must retry (librados resends) and succeed, or fail with a one-line
#   error and then complete with --resume.
# Round 2: the OSD is killed and the fill is killed too (the operator gives up);
#   the volume is as before the fill, and after the restart --resume completes.
# Each round: `archip verify` is clean and export matches the image byte for byte.
set -uo pipefail
BIN=$1
BASE=$2
CONF=$(printf '%s' "$BASE" | sed -n 's/.*conf=\([^&]*\).*/\1/p')
DIR=$(dirname "$CONF")
PIDF=$DIR/run/osd.0.pid
MIB=${OSD_KILL_MIB:-2048}   # long enough for a checkpoint (every 2 s) before the kill
fail=0
IMG=$(mktemp /var/tmp/archip-osdkill-XXXXXX)
OUT=$IMG.out
trap 'rm -f "$IMG" "$OUT" "$IMG".err' EXIT
head -c $((MIB << 20)) /dev/urandom >"$IMG"

grep -q "objectstore = bluestore" "$CONF" 2>/dev/null ||
    { echo "SKIP osd-kill: the cluster's OSD is not bluestore (memstore loses everything on kill -9)"; exit 0; }

osd_up() {
    ceph-osd -c "$CONF" -i 0 2>>"$DIR/log/osd-start.log" || return 1
    for _ in $(seq 120); do
        echo ok | timeout 10 rados -c "$CONF" -p "$(printf '%s' "$BASE" | sed -e 's|^rados://||' -e 's|?.*||')" put osd-kill-probe - 2>/dev/null && return 0
        sleep 0.5
    done
    return 1
}

POOL=$(printf '%s' "$BASE" | sed -e 's|^rados://||' -e 's|?.*||')

# Waits until the fill has stored some blocks (or 10 s).
wait_some() {
    local u=$1
    for _ in $(seq 100); do
        [ "$(rados -c "$CONF" -p "$POOL" -N "${u##*ns=}" ls 2>/dev/null | grep -c '^blocks/')" -ge 8 ] && return
        sleep 0.1
    done
}

# Waits until the fill's checkpoint (fills/v) has grown: it records verified blocks.
wait_checkpoint() {
    local u=$1 first="" size
    for _ in $(seq 300); do
        size=$(rados -c "$CONF" -p "$POOL" -N "${u##*ns=}" stat fills/v 2>/dev/null | sed -n 's/.*size \([0-9]*\).*/\1/p')
        if [ -n "$size" ]; then
            [ -z "$first" ] && first=$size
            [ "$size" -gt "$first" ] && return 0
        fi
        sleep 0.1
    done
    return 1
}

check() {   # $1 round, $2 url
    "$BIN/archip" --store "$2" verify v >/dev/null || { echo "FAIL $1: verify"; return 1; }
    rm -f "$OUT"
    "$BIN/archip" --store "$2" export v "$OUT" && cmp -s "$IMG" "$OUT" || { echo "FAIL $1: the volume differs from the image"; return 1; }
    rm -f "$OUT"
}

round1() {
    local U="$BASE&ns=osdkill1-$$"
    "$BIN/archip" --store "$U" fill v --from "file:$IMG" --progress none >/dev/null 2>"$IMG.err" &
    local pid=$!
    wait_some "$U"
    kill -0 $pid 2>/dev/null || { echo "FAIL round 1: the fill ended before the OSD was killed (raise OSD_KILL_MIB)"; return 1; }
    kill -9 "$(cat "$PIDF")"
    local t0=$(date +%s.%N)
    sleep 2
    osd_up || { echo "FAIL round 1: the OSD did not come back"; kill -9 $pid; return 1; }
    wait $pid
    local st=$?
    echo "round 1: OSD killed during the fill, back after $(echo "$(date +%s.%N) - $t0" | bc) s; fill exited $st $(tail -1 "$IMG.err")"
    if [ $st -ne 0 ]; then
        [ "$(wc -l <"$IMG.err")" -le 1 ] || { echo "FAIL round 1: the failed fill's error is not one line:"; cat "$IMG.err"; return 1; }
        "$BIN/archip" --store "$U" fill v --from "file:$IMG" --resume --progress none || { echo "FAIL round 1: --resume"; return 1; }
    fi
    check "round 1" "$U" || return 1
    echo "PASS osd-kill round 1"
}

round2() {
    local U="$BASE&ns=osdkill2-$$"
    "$BIN/archip" --store "$U" create v --size "${MIB}M" || return 1
    "$BIN/archip" --store "$U" fill v --from "file:$IMG" --progress none >/dev/null 2>"$IMG.err" &
    local pid=$!
    wait_checkpoint "$U" && kill -0 $pid 2>/dev/null ||
        { echo "FAIL round 2: the fill ended before it checkpointed (raise OSD_KILL_MIB)"; kill -9 $pid 2>/dev/null; return 1; }
    kill -9 "$(cat "$PIDF")"
    sleep 1
    kill -9 $pid; wait $pid 2>/dev/null
    osd_up || { echo "FAIL round 2: the OSD did not come back"; return 1; }
    # The volume is as it was: empty (the fill commits in one step at the end).
    "$BIN/archip" --store "$U" read v --offset 0 --length 1M | cmp -s - <(head -c 1M /dev/zero) ||
        { echo "FAIL round 2: the killed fill changed the volume"; return 1; }
    "$BIN/archip" --store "$U" fill v --from "file:$IMG" --progress none >/dev/null 2>&1 &&
        { echo "FAIL round 2: a fill without --resume ran over the interrupted one"; return 1; }
    local out
    out=$("$BIN/archip" --store "$U" fill v --from "file:$IMG" --resume --progress none) || { echo "FAIL round 2: --resume"; return 1; }
    echo "round 2: OSD and fill killed; after the restart: $out"
    printf '%s' "$out" | grep -q 'resumed [1-9]' || { echo "FAIL round 2: --resume fetched every block again"; return 1; }
    check "round 2" "$U" || return 1
    echo "PASS osd-kill round 2"
}

round1 || fail=1
round2 || fail=1
exit $fail
