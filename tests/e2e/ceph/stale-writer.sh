#!/bin/bash
# Stale writer on a real cluster: a writer process (archip-torture work: writes,
# flushes, snapshots in a loop) is paused with SIGSTOP; another node breaks its
# lock with `archip unlock --force`, writes and flushes; the writer is resumed.
# It must fail (its map/log update is refused) and `archip verify` must be clean.
#
# Run twice: with fencing (the forced break blocklists the paused client) and
# with ARCHIP_RADOS_NO_FENCE=1 (only the compare-and-swap of the record, map and
# log stops it; or an in-place write into a block object the new holder
# replaced, which asserts the object exists). Each case's namespace is removed.
#
#   stale-writer.sh BIN_DIR rados://POOL?conf=...&id=...
set -uo pipefail
BIN=$1
BASE=$2
fail=0
UP=$(dirname "$0")/ceph-up.sh

run() {   # $1: fence|nofence
    local mode=$1
    local U="$BASE&ns=stale-$mode-$$"
    local J=$(mktemp /tmp/archip-stale-XXXXXX)
    local out=$(mktemp /tmp/archip-stale-err-XXXXXX)
    "$BIN/archip" --store "$U" --node torture-node create torture --size 16M --block-size 64K || return 1
    "$BIN/archip-torture" work --store "$U" --seed 7 --start-gen 1 --journal "$J" 2>"$out" &
    local pid=$!
    sleep 2
    kill -STOP $pid
    local before=$(grep -c '^flushed' "$J")
    local env=()
    [ "$mode" = nofence ] && env=(env ARCHIP_RADOS_NO_FENCE=1)
    # The paused writer's lease is still valid: only --ignore-lease breaks it
    # (the blocklist, or the compare-and-swap and the writer's own lease
    # fence, then stop it).
    "${env[@]}" "$BIN/archip" --store "$U" --node node-b unlock --force --ignore-lease torture || return 1
    head -c 1M /dev/urandom >"$J.data"
    "$BIN/archip" --store "$U" --node node-b write torture --offset 0 <"$J.data" || return 1
    kill -CONT $pid
    local waited=0
    while kill -0 $pid 2>/dev/null && [ $waited -lt 300 ]; do sleep 0.1; waited=$((waited + 1)); done
    if kill -0 $pid 2>/dev/null; then
        kill -9 $pid; wait $pid 2>/dev/null
        echo "FAIL $mode: the resumed writer was still running after 30 s (its writes were not refused)"
        return 1
    fi
    wait $pid
    local status=$?
    local err=$(tail -1 "$out")
    echo "$mode: writer flushed $before generations before SIGSTOP; resumed writer exited $status: $err"
    [ $status -ne 0 ] || { echo "FAIL $mode: the stale writer exited 0"; return 1; }
    if [ "$mode" = fence ]; then
        grep -q "blocklisted" "$out" || { echo "FAIL $mode: no blocklist error"; return 1; }
    else
        # Four ways the stale writer is stopped before its map can replace
        # node-b's: its own lease fence (a renewal found the lock broken), a
        # compare-and-swap refused, a block write into a layer node-b's gc
        # removed, or a read of a block object that gc removed.
        grep -qE "is fenced|changed by another writer|write layers/[0-9a-f]+/b[0-9a-f]+ in .*No such file or directory \(rados error -2\)|block [0-9]+ is missing its object layers/" "$out" ||
            { echo "FAIL $mode: neither a compare-and-swap error nor a refused block write or read: $(tail -1 "$out")"; return 1; }
    fi
    if [ "$mode" = fence ]; then
        # node-b's write is intact and the volume verifies.
        "$BIN/archip" --store "$U" --node node-b read torture --offset 0 --length 1M | cmp - "$J.data" ||
            { echo "FAIL $mode: node-b's flushed write was overwritten"; return 1; }
        "$BIN/archip" --store "$U" --node node-b verify torture || { echo "FAIL $mode: verify"; return 1; }
    elif "$BIN/archip" --store "$U" --node node-b read torture --offset 0 --length 1M | cmp -s - "$J.data"; then
        echo "nofence: node-b's write intact"
    else
        # Known: without fencing only maps, logs and records are compare-and-swapped;
        # in-place block writes the stale writer made before its flush failed land.
        echo "nofence: node-b's write was changed by the stale writer's block writes (expected without fencing)"
    fi
    rm -f "$J" "$J.data" "$out"
    echo "PASS stale writer ($mode)"
}

# Each case, then its namespace removed whatever the result.
run_case() {
    run "$1"
    local status=$?
    "$UP" purge "stale-$1-$$" >/dev/null || echo "stale-writer: could not remove namespace stale-$1-$$"
    return $status
}

run_case fence || fail=1
# Without fencing the resumed writer used to run on (3 of 5 runs: "hangs"): its
# snapshot's record write passed (the new holder never wrote the record) and a gc
# in the writer re-read maps and logs, taking their new versions. Now a new
# exclusive holder marks the record and reads never move the version of an
# object the process wrote. STALE_NOFENCE=0 skips this case.
if [ "${STALE_NOFENCE:-1}" = 1 ]; then
    run_case nofence || fail=1
else
    echo "SKIP stale writer (nofence): STALE_NOFENCE=0"
fi
exit $fail
