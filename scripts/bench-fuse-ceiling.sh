#!/bin/bash
# make bench, node data path (issue 4): how fast can a loop device over a FUSE
# file read on this machine at all? The loop-device read goals (>= 0.8x
# sequential, >= 0.5x 4 KiB random, against a plain loop device over a
# page-cached file) are judged on archip's FUSE export; this measures the same
# two fio jobs on a minimal FUSE server in C (scripts/fuse-probe.c: one file,
# pread/pwrite on a page-cached file, no store, no libfuse) over each transport
# the kernel has, in the same run:
#   plain          the baseline: loop device, buffered, over a written file
#   archip         an attached volume's loop device (written the same way)
#   fuse-classic-N the probe, N threads on /dev/fuse, loop with direct I/O
#   fuse-uring-N   the probe over FUSE-over-io_uring (Linux 6.14+, enable_uring),
#                  N entries per CPU queue
#   fuse-cached    the probe with the kernel's page cache on the FUSE file and
#                  a buffered loop device (reads after the first pass never
#                  reach the server; a design archip does not use: it would
#                  cache every block twice and needs invalidation on migration)
# Rounds (BENCH_FC_ROUNDS, default 3) rotate the order of the targets; the
# median of the per-round ratios against plain is reported, [min-max].
#
#   scripts/bench-fuse-ceiling.sh [path/to/archip]
#
# Needs root, /dev/fuse, fio, cc and liburing (liburing-dev); prints why and
# exits 0 where they are missing. enable_uring is set for the uring rounds and
# put back as it was.
set -eu

ARCHIP=${1:-.build/release/archip}
ROUNDS=${BENCH_FC_ROUNDS:-3}
SECS=${BENCH_FC_SECONDS:-8}
HERE=$(cd "$(dirname "$0")" && pwd)
BENCH_NAME=fuse-ceiling
# shellcheck source=scripts/bench-rounds.sh
. "$HERE/bench-rounds.sh"

[ "$(id -u)" = 0 ] || skip "not root"
[ -e /dev/fuse ] || skip "/dev/fuse is missing"
command -v fio >/dev/null || skip "fio is not installed (make deps)"
command -v cc >/dev/null || skip "no C compiler"
[ -x "$ARCHIP" ] || { echo "bench-fuse-ceiling: $ARCHIP is not an executable" >&2; exit 1; }

bench_workdir
mkdir -p "$WORK/mnt"
cc -O2 -Wall -o "$WORK/fuse-probe" "$HERE/fuse-probe.c" -luring -lpthread 2>"$WORK/cc.err" ||
    skip "cannot build fuse-probe (liburing-dev?): $(head -1 "$WORK/cc.err")"

URING_PARAM=/sys/module/fuse/parameters/enable_uring
URING_WAS=""
[ -w "$URING_PARAM" ] && URING_WAS=$(cat "$URING_PARAM")
PROBE_PID="" DEV=""

stop_target() {
    [ -n "$DEV" ] && losetup -d "$DEV" 2>/dev/null || true
    DEV=""
    if [ -n "$PROBE_PID" ]; then
        umount -l "$WORK/mnt" 2>/dev/null || true
        wait "$PROBE_PID" 2>/dev/null || true
        PROBE_PID=""
    fi
    "$ARCHIP" detach v >/dev/null 2>&1 || true
    "$ARCHIP" remove v >/dev/null 2>&1 || true
}
cleanup() {
    stop_target
    if [ -f "$WORK/run/serve.pid" ]; then kill "$(cat "$WORK/run/serve.pid")" 2>/dev/null || true; sleep 1; fi
    [ -n "$URING_WAS" ] && echo "$URING_WAS" > "$URING_PARAM" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# job DEV NAME RW BS [fio options]: appends "NAME bytes/s iops" to $OUT.
job() {
    dev=$1 name=$2 rw=$3 bs=$4
    shift 4
    fio --name="$name" --filename="$dev" --rw="$rw" --bs="$bs" --iodepth=16 --numjobs=1 --ioengine=libaio \
        --direct=1 --size=1G --output-format=terse --terse-version=3 "$@" 2>/dev/null |
        awk -F';' -v n="$name" '{ printf "%s %.0f %.0f\n", n, $7 * 1024, $8 }' >> "$OUT"
}

# start_probe MODE N [cached]: mounts the probe over $WORK/data.img and puts a loop device on it.
start_probe() {
    cached=${3:-}
    if [ -n "$cached" ]; then
        PROBE_CACHED=1 "$WORK/fuse-probe" "$WORK/mnt" "$WORK/data.img" "$1" "$2" >/dev/null 2>"$WORK/probe.err" &
    else
        "$WORK/fuse-probe" "$WORK/mnt" "$WORK/data.img" "$1" "$2" >/dev/null 2>"$WORK/probe.err" &
    fi
    PROBE_PID=$!
    i=0; while ! [ -e "$WORK/mnt/vol" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    [ -e "$WORK/mnt/vol" ] || { cat "$WORK/probe.err" >&2; return 1; }
    if [ -n "$cached" ]; then DEV=$(losetup -f --show "$WORK/mnt/vol")
    else DEV=$(losetup -f --show --direct-io=on --sector-size 4096 "$WORK/mnt/vol"); fi
}

run_target() {
    t=$1
    case $t in
        plain) DEV=$(losetup -f --show "$WORK/data.img") ;;
        archip)
            "$ARCHIP" create v --size 1G >/dev/null
            DEV=$("$ARCHIP" attach v | sed -n 1p)
            fio --name=fill --filename="$DEV" --rw=write --bs=1M --iodepth=16 --ioengine=libaio --direct=1 \
                --size=1G --end_fsync=1 --output-format=terse >/dev/null ;;
        fuse-classic-*) start_probe classic "${t##*-}" ;;
        fuse-uring-*)
            [ -n "$URING_WAS" ] || { echo "$t: $URING_PARAM cannot be set" >> "$WORK/skipped"; return 0; }
            echo Y > "$URING_PARAM"
            start_probe uring "${t##*-}" || { echo "$t: the probe could not start" >> "$WORK/skipped"; stop_target; return 0; } ;;
        fuse-cached) start_probe classic 4 cached ;;
    esac
    # The cached target's first pass fills its page cache; the measured passes follow.
    [ "$t" = fuse-cached ] && fio --name=warm --filename="$DEV" --rw=read --bs=1M --iodepth=16 --ioengine=libaio \
        --direct=1 --size=1G --output-format=terse >/dev/null
    job "$DEV" "$t.seqread" read 1M --loops=3
    job "$DEV" "$t.randread" randread 4k --time_based --runtime="$SECS" --randrepeat=0
    stop_target
}

# One data file for the plain loop device and the probe, written and in the page cache.
dd if=/dev/urandom of="$WORK/data.img" bs=4M count=256 status=none
TARGETS="plain archip fuse-classic-2 fuse-classic-8 fuse-uring-4 fuse-cached"
run_rounds

say "# fuse ceiling: the read jobs of the data-path bench (fio, iodepth 16, 1 GiB, random ${SECS} s) on a minimal FUSE server in C (scripts/fuse-probe.c) per transport, $ROUNDS rounds in rotated order; median of the per-round ratios against the plain loop device [min-max]"
report fuse-ceiling 0.8 0.5
