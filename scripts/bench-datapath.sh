#!/bin/sh
# make bench, node data path (issue 4): sequential and 4 KiB random reads and
# writes through an attached volume's loop device and through its NBD export,
# each as a ratio against a plain loop device over a local sparse file,
# measured in the same run with the same fio job.
#
# The baseline (the issue's, the goals are judged against it): a loop device
# with buffered I/O (losetup default, --direct-io=off) over a sparse file on
# the same file system as the store; fio writes it first (the sequential write
# job), so its reads come from the page cache, as the store's do. A second,
# informational baseline is printed beside it: a loop device with
# --direct-io=on over a file on the same file system, written the same way
# (reads and writes go to the disk, no page cache in between).
#
#   scripts/bench-datapath.sh [path/to/archip]
#
# Needs root, /dev/fuse, /dev/loop-control and fio (Debian's, with its nbd
# engine); prints why and exits 0 where they are missing. Results are printed
# and appended to $BENCH_DIR/results.txt (default ./.bench).
# BENCH_DP_MIB (default 1024): the size of each target; BENCH_DP_SECONDS
# (default 10): the length of each random-I/O job.
set -eu

ARCHIP=${1:-.build/release/archip}
BENCH_DIR=${BENCH_DIR:-$PWD/.bench}
MIB=${BENCH_DP_MIB:-1024}
SECONDS_PER_JOB=${BENCH_DP_SECONDS:-10}
WORK=$BENCH_DIR/datapath
RESULTS=$BENCH_DIR/results.txt

say() { printf '%s\n' "$*"; mkdir -p "$BENCH_DIR"; printf '%s\n' "$*" >> "$RESULTS"; }
skip() { say "datapath: skipped: $*"; exit 0; }

[ "$(id -u)" = 0 ] || skip "not root"
for d in /dev/fuse /dev/loop-control; do [ -e "$d" ] || skip "$d is missing"; done
command -v fio >/dev/null || skip "fio is not installed (make deps)"
command -v python3 >/dev/null || skip "python3 is not installed"
fio --enghelp 2>/dev/null | grep -qw nbd || skip "this fio has no nbd engine"
[ -x "$ARCHIP" ] || { echo "bench-datapath: $ARCHIP is not an executable" >&2; exit 1; }

rm -rf "$WORK"
mkdir -p "$WORK"
export ARCHIP_STORE="$WORK/store" ARCHIP_NODE=bench ARCHIP_RUNTIME_DIR="$WORK/run"
unset ARCHIP_CONFIG || true
PLAIN=""
PLAINDIO=""
cleanup() {
    "$ARCHIP" detach vloop >/dev/null 2>&1 || true
    "$ARCHIP" detach vnbd >/dev/null 2>&1 || true
    if [ -f "$WORK/run/serve.pid" ]; then
        pid=$(cat "$WORK/run/serve.pid")
        kill "$pid" 2>/dev/null || true
        i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    fi
    [ -n "$PLAIN" ] && losetup -d "$PLAIN" 2>/dev/null || true
    [ -n "$PLAINDIO" ] && losetup -d "$PLAINDIO" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# The baseline: a plain loop device over a sparse file on the same file system.
truncate -s "${MIB}M" "$WORK/plain.img"
PLAIN=$(losetup -f --show "$WORK/plain.img")
# The informational second baseline: direct I/O to the backing file.
truncate -s "${MIB}M" "$WORK/plain-dio.img"
PLAINDIO=$(losetup -f --show --direct-io=on "$WORK/plain-dio.img")

# The volumes: one used through its loop device, one through NBD (so each
# path starts from an empty volume, as the plain file does).
"$ARCHIP" create vloop --size "${MIB}M" >/dev/null
"$ARCHIP" create vnbd --size "${MIB}M" >/dev/null
LOOPDEV=$("$ARCHIP" attach vloop | sed -n 1p)
URI=$("$ARCHIP" attach vnbd | sed -n 2p)
SOCK=$(printf '%s' "$URI" | sed -n 's/^nbd:unix:\(.*\):exportname=.*$/\1/p')
FIO_NBD_URI="nbd+unix:///vnbd?socket=$SOCK"

# fio_job TARGET KIND NAME RW BS [extra fio options]: prints "bytes/s iops".
fio_job() {
    target=$1 kind=$2 name=$3 rw=$4 bs=$5
    shift 5
    if [ "$kind" = nbd ]; then
        engine="--ioengine=nbd --uri=$target"
    else
        engine="--ioengine=libaio --direct=1 --filename=$target"
    fi
    # shellcheck disable=SC2086
    fio --name="$name" $engine --rw="$rw" --bs="$bs" --iodepth=16 --numjobs=1 \
        --size="${MIB}M" --output-format=json --output="$WORK/fio.json" "$@" > /dev/null
    python3 - "$WORK/fio.json" "$rw" <<'EOF'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
d = job["read" if "read" in sys.argv[2] else "write"]
print(int(d["bw_bytes"]), int(d["iops"]))
EOF
}

# Each job on the three targets back to back (the machine's load moves; the
# baseline is measured next to what it is compared with), in this order: a
# target is written before it is read.
on_all() {
    job=$1
    shift
    fio_job "$PLAIN" block "$job" "$@" > "$WORK/plain.$job"
    fio_job "$PLAINDIO" block "$job" "$@" > "$WORK/plaindio.$job"
    fio_job "$LOOPDEV" block "$job" "$@" > "$WORK/loop.$job"
    fio_job "$FIO_NBD_URI" nbd "$job" "$@" > "$WORK/nbd.$job"
}
on_all seqwrite write 1M --end_fsync=1
on_all seqread read 1M
on_all randread randread 4k --time_based --runtime="$SECONDS_PER_JOB" --randrepeat=0
on_all randwrite randwrite 4k --time_based --runtime="$SECONDS_PER_JOB" --randrepeat=0 --end_fsync=1

say "# node data path: fio, iodepth 16, ${MIB} MiB targets, random jobs ${SECONDS_PER_JOB} s; baseline (goals): plain loop device ($PLAIN, buffered, --direct-io=off) over a sparse file in $BENCH_DIR, written by the first job so reads hit the page cache; 'loop-dio': a loop device with --direct-io=on over a written file there (informational)"
# row JOB LABEL GOAL
row() {
    job=$1 label=$2 goal=$3
    for path in loop nbd; do
        python3 - "$WORK/plain.$job" "$WORK/$path.$job" "$job" "$label" "$path" "$goal" "$WORK/plaindio.$job" <<'EOF' | while IFS= read -r line; do say "$line"; done
import sys
base = open(sys.argv[1]).read().split(); got = open(sys.argv[2]).read().split()
dio = open(sys.argv[7]).read().split()
job, label, path, goal = sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6])
how = "loop device" if path == "loop" else "NBD (fio nbd engine)"
if job.startswith("seq"):
    g, b, d = int(got[0]), int(base[0]), int(dio[0]); unit = lambda v: "%.0f MB/s" % (v / 1e6)
else:
    g, b, d = int(got[1]), int(base[1]), int(dio[1]); unit = lambda v: "%.1fk IOPS" % (v / 1e3)
r = g / b if b else 0.0
rd = g / d if d else 0.0
print("datapath: %-24s through %-22s %12s, plain loop %12s: ratio %.2f (goal >= %.1f%s); loop-dio %12s: ratio %.2f"
      % (label, how + ":", unit(g), unit(b), r, goal, "" if r >= goal else ", NOT MET", unit(d), rd))
EOF
    done
}
row seqwrite "sequential write 1 MiB" 0.8
row seqread "sequential read 1 MiB" 0.8
row randread "random read 4 KiB" 0.5
row randwrite "random write 4 KiB" 0.5
