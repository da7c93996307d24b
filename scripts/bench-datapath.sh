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
# (default 10): the length of each random-I/O job; BENCH_DP_ROUNDS (default 3):
# rounds, each on fresh targets in a rotated order (medians are reported).
set -eu

ARCHIP=${1:-.build/release/archip}
BENCH_DIR=${BENCH_DIR:-$PWD/.bench}
MIB=${BENCH_DP_MIB:-1024}
SECONDS_PER_JOB=${BENCH_DP_SECONDS:-10}
ROUNDS=${BENCH_DP_ROUNDS:-3}
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
teardown() {
    "$ARCHIP" detach vloop >/dev/null 2>&1 || true
    "$ARCHIP" detach vnbd >/dev/null 2>&1 || true
    "$ARCHIP" remove vloop >/dev/null 2>&1 || true
    "$ARCHIP" remove vnbd >/dev/null 2>&1 || true
    [ -n "$PLAIN" ] && losetup -d "$PLAIN" 2>/dev/null || true
    [ -n "$PLAINDIO" ] && losetup -d "$PLAINDIO" 2>/dev/null || true
    PLAIN="" PLAINDIO=""
    rm -f "$WORK/plain.img" "$WORK/plain-dio.img"
}
cleanup() {
    teardown
    if [ -f "$WORK/run/serve.pid" ]; then
        pid=$(cat "$WORK/run/serve.pid")
        kill "$pid" 2>/dev/null || true
        i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# Fresh, empty targets for a round: the baseline (a plain loop device over a
# sparse file on the same file system), the informational loop-dio, and two
# volumes, one used through its loop device, one through NBD (so each path
# starts from an empty volume, as the plain file does).
setup() {
    truncate -s "${MIB}M" "$WORK/plain.img"
    PLAIN=$(losetup -f --show "$WORK/plain.img")
    truncate -s "${MIB}M" "$WORK/plain-dio.img"
    PLAINDIO=$(losetup -f --show --direct-io=on "$WORK/plain-dio.img")
    "$ARCHIP" create vloop --size "${MIB}M" >/dev/null
    "$ARCHIP" create vnbd --size "${MIB}M" >/dev/null
    LOOPDEV=$("$ARCHIP" attach vloop | sed -n 1p)
    URI=$("$ARCHIP" attach vnbd | sed -n 2p)
    SOCK=$(printf '%s' "$URI" | sed -n 's/^nbd:unix:\(.*\):exportname=.*$/\1/p')
    FIO_NBD_URI="nbd+unix:///vnbd?socket=$SOCK"
}

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
    python3 - "$WORK/fio.json" "$rw" <<'EOF2'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
d = job["read" if "read" in sys.argv[2] else "write"]
print(int(d["bw_bytes"]), int(d["iops"]))
EOF2
}

# One job on the four targets back to back, the order rotated by round: the
# disk and the page cache carry state from one run to the next (a disk that
# has just taken 2 GiB writes the next GiB slower), so no target may always
# come first. Results: $WORK/TARGET.JOB.ROUND.
on_all() {
    round=$1 job=$2
    shift 2
    order="plain plaindio loop nbd"
    i=0
    while [ $i -lt $((round % 4)) ]; do order="${order#* } ${order%% *}"; i=$((i + 1)); done
    for t in $order; do
        case $t in
            plain) fio_job "$PLAIN" block "$job" "$@" ;;
            plaindio) fio_job "$PLAINDIO" block "$job" "$@" ;;
            loop) fio_job "$LOOPDEV" block "$job" "$@" ;;
            nbd) fio_job "$FIO_NBD_URI" nbd "$job" "$@" ;;
        esac > "$WORK/$t.$job.$round"
    done
}

# Each round starts from empty targets; within it a target is written before
# it is read (the sequential write fills it; reads then come from the page
# cache, for the baseline and for the store's objects alike).
round=1
while [ "$round" -le "$ROUNDS" ]; do
    setup
    on_all "$round" seqwrite write 1M --end_fsync=1
    on_all "$round" seqread read 1M
    on_all "$round" randread randread 4k --time_based --runtime="$SECONDS_PER_JOB" --randrepeat=0
    on_all "$round" randwrite randwrite 4k --time_based --runtime="$SECONDS_PER_JOB" --randrepeat=0 --end_fsync=1
    teardown
    round=$((round + 1))
done

say "# node data path: fio, iodepth 16, ${MIB} MiB targets, random jobs ${SECONDS_PER_JOB} s, $ROUNDS rounds (fresh targets each round, the order of the targets rotated); median of the per-round ratios [min-max]; baseline (goals): plain loop device (buffered, --direct-io=off) over a sparse file in $BENCH_DIR, written by the first job so reads hit the page cache; 'loop-dio': a loop device with --direct-io=on over a written file there (informational)"
# row JOB LABEL GOAL
row() {
    job=$1 label=$2 goal=$3
    for path in loop nbd; do
        python3 - "$WORK" "$job" "$label" "$path" "$goal" "$ROUNDS" <<'EOF2' | while IFS= read -r line; do say "$line"; done
import statistics, sys
work, job, label, path, goal, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), int(sys.argv[6])
col = 0 if job.startswith("seq") else 1
def value(target, r):
    return int(open("%s/%s.%s.%d" % (work, target, job, r)).read().split()[col])
unit = (lambda v: "%.0f MB/s" % (v / 1e6)) if col == 0 else (lambda v: "%.1fk IOPS" % (v / 1e3))
got = [value(path, r) for r in range(1, rounds + 1)]
base = [value("plain", r) for r in range(1, rounds + 1)]
dio = [value("plaindio", r) for r in range(1, rounds + 1)]
ratios = [g / b if b else 0.0 for g, b in zip(got, base)]
rdio = [g / d if d else 0.0 for g, d in zip(got, dio)]
r = statistics.median(ratios)
how = "loop device" if path == "loop" else "NBD (fio nbd engine)"
met = sum(1 for x in ratios if x >= goal)
print("datapath: %-24s through %-22s %12s, plain loop %12s: ratio %.2f [%.2f-%.2f] (goal >= %.1f%s, %d of %d rounds); loop-dio %12s: ratio %.2f"
      % (label, how + ":", unit(statistics.median(got)), unit(statistics.median(base)), r, min(ratios), max(ratios), goal,
         "" if r >= goal else ", NOT MET", met, rounds, unit(statistics.median(dio)), statistics.median(rdio)))
EOF2
    done
}
row seqwrite "sequential write 1 MiB" 0.8
row seqread "sequential read 1 MiB" 0.8
row randread "random read 4 KiB" 0.5
row randwrite "random write 4 KiB" 0.5
