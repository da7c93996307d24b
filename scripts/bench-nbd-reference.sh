#!/bin/bash
# make bench, node data path (issue 4): archip's NBD export beside other NBD
# servers, all read by the same client (fio's nbd engine, libnbd) in the same
# run. The data-path bench judges NBD against a plain loop device, which the
# kernel reads with one copy and no socket; this says how far the NBD
# client/socket path itself gets on this machine:
#   plain          loop device, buffered, over the written, cached file (the data-path baseline)
#   archip         an attached volume's NBD socket (written the same way)
#   nbdkit-file    nbdkit's file plugin over the same cached file
#   nbdkit-memory  nbdkit's memory plugin (no file at all: the data is in its RAM)
#   qemu-nbd       qemu-nbd --cache=writeback over the same cached file
# Rounds (BENCH_NR_ROUNDS, default 3) rotate the order; medians of the
# per-round ratios against plain, [min-max].
#
#   scripts/bench-nbd-reference.sh [path/to/archip]
#
# Needs root, fio with its nbd engine, nbdkit and qemu-nbd; a missing server
# is skipped with the reason.
set -eu

ARCHIP=${1:-.build/release/archip}
ROUNDS=${BENCH_NR_ROUNDS:-3}
SECS=${BENCH_NR_SECONDS:-6}
BENCH_NAME=nbd-reference
# shellcheck source=scripts/bench-rounds.sh
. "$(dirname "$0")/bench-rounds.sh"

[ "$(id -u)" = 0 ] || skip "not root"
command -v fio >/dev/null || skip "fio is not installed (make deps)"
fio --enghelp 2>/dev/null | grep -qw nbd || skip "this fio has no nbd engine"
[ -x "$ARCHIP" ] || { echo "bench-nbd-reference: $ARCHIP is not an executable" >&2; exit 1; }

bench_workdir
SERVER_PID="" DEV="" URI=""

stop_target() {
    [ -n "$DEV" ] && losetup -d "$DEV" 2>/dev/null || true
    [ -n "$SERVER_PID" ] && { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
    "$ARCHIP" detach v >/dev/null 2>&1 || true
    "$ARCHIP" remove v >/dev/null 2>&1 || true
    DEV="" SERVER_PID="" URI=""
    rm -f "$WORK"/*.sock
}
cleanup() {
    stop_target
    if [ -f "$WORK/run/serve.pid" ]; then kill "$(cat "$WORK/run/serve.pid")" 2>/dev/null || true; sleep 1; fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# job NAME RW BS [fio options]: appends "NAME bytes/s iops" to $OUT, on $DEV or $URI.
job() {
    name=$1 rw=$2 bs=$3
    shift 3
    if [ -n "$DEV" ]; then target="--ioengine=libaio --direct=1 --filename=$DEV"; else target="--ioengine=nbd --uri=$URI"; fi
    # shellcheck disable=SC2086
    fio --name="$name" $target --rw="$rw" --bs="$bs" --iodepth=16 --numjobs=1 --size=1G \
        --output-format=terse --terse-version=3 "$@" 2>/dev/null | tr -d '\n' |
        awk -F';' -v n="$name" '{ printf "%s %.0f %.0f\n", n, $7 * 1024, $8 }' >> "$OUT"
}

# Waits for a unix socket to appear.
wait_socket() {
    i=0; while ! [ -S "$1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    [ -S "$1" ]
}

run_target() {
    t=$1
    case $t in
        plain) DEV=$(losetup -f --show "$WORK/data.img") ;;
        archip)
            "$ARCHIP" create v --size 1G >/dev/null
            uri=$("$ARCHIP" attach v | sed -n 2p)
            sock=$(printf '%s' "$uri" | sed -n 's/^nbd:unix:\(.*\):exportname=.*$/\1/p')
            URI="nbd+unix:///v?socket=$sock"
            fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=16 --size=1G --end_fsync=1 \
                --output-format=terse >/dev/null ;;
        nbdkit-file|nbdkit-memory)
            command -v nbdkit >/dev/null || { echo "$t: nbdkit is not installed" >> "$WORK/skipped"; return 0; }
            if [ "$t" = nbdkit-file ]; then
                nbdkit --foreground -U "$WORK/k.sock" file "$WORK/data.img" 2>>"$WORK/server.err" &
            else
                nbdkit --foreground -U "$WORK/k.sock" memory 1G 2>>"$WORK/server.err" &
            fi
            SERVER_PID=$!
            wait_socket "$WORK/k.sock" || { echo "$t: did not start" >> "$WORK/skipped"; stop_target; return 0; }
            URI="nbd+unix:///?socket=$WORK/k.sock"
            # The memory plugin starts empty (reads of holes are cheap): write it first, as the others are.
            [ "$t" = nbdkit-memory ] && fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=16 \
                --size=1G --output-format=terse >/dev/null ;;
        qemu-nbd)
            command -v qemu-nbd >/dev/null || { echo "$t: qemu-nbd is not installed" >> "$WORK/skipped"; return 0; }
            qemu-nbd --persistent --shared=4 -k "$WORK/q.sock" -x q -f raw --cache=writeback "$WORK/data.img" 2>>"$WORK/server.err" &
            SERVER_PID=$!
            wait_socket "$WORK/q.sock" || { echo "$t: did not start" >> "$WORK/skipped"; stop_target; return 0; }
            URI="nbd+unix:///q?socket=$WORK/q.sock" ;;
    esac
    job "$t.seqread" read 1M --loops=3
    job "$t.randread" randread 4k --time_based --runtime="$SECS" --randrepeat=0
    stop_target
}

dd if=/dev/urandom of="$WORK/data.img" bs=4M count=256 status=none
cat "$WORK/data.img" > /dev/null
TARGETS="plain archip nbdkit-file nbdkit-memory qemu-nbd"
run_rounds

say "# nbd reference: fio's nbd engine (iodepth 16, 1 GiB, random ${SECS} s) on archip's export and on other NBD servers over a cached file, $ROUNDS rounds in rotated order; median of the per-round ratios against the plain loop device [min-max]"
report nbd-reference
