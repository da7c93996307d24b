#!/bin/bash
# make bench, checked reads (issue 15, docs/CHECKSUMS.md): what checking
# every read costs on the node data path. The same fio read jobs on an
# attached volume's NBD export and loop device (FUSE), served by node daemons
# of the same build in the same run: one as shipped (checked), two started
# with ARCHIP_BENCH_UNCHECKED=1 (reads unchecked; only the bench sets it).
# The second unchecked daemon is the A/A control: unchecked against
# unchecked shows the noise floor of this machine in this run, and a
# checked/unchecked ratio means something only against it.
#
# How the runs are made comparable:
# - The volumes are written by fio first (owned blocks with their 4 KiB
#   checksums) and then read once whole, untimed (the first read since the
#   write: every page checked; reported apart, one sample). The timed rounds
#   read from the page cache, so the checks' CPU cost is not hidden behind
#   the disk. Caches are deliberately not dropped: every volume (7 x MIB)
#   stays cached; the script checks there is memory for it.
# - Interleaved: in each round, each job runs on the three daemons back to
#   back (short, time-based runs), their order permuted from round to round
#   (all six orders), so drift in the machine's load hits all three alike.
# - Pinned on request (BENCH_CK_PIN=1, with 2+ CPUs): daemons on the last
#   CPU, fio on the others (taskset), so fio and a daemon do not trade places
#   on one CPU differently from run to run. Off by default: on the 2-CPU
#   development VM it halved the loop device's random reads and did not
#   narrow the A/A range.
# Rows: per path and job, checked/unchecked and unchecked2/unchecked (A/A),
# median of the per-round ratios and their interquartile range [Q1-Q3]
# (goal >= 0.9: at most 10% slower), then each target against the plain
# loop device as the data-path rows are. Also the daemon's CPU time per
# request (/proc/PID/stat, user + system), checked against unchecked and
# A/A: what the checks cost the daemon, far less sensitive to the machine's
# load than the throughput (fio's and the kernel's side are not in it).
#
#   scripts/bench-checks.sh [path/to/archip]
#
# Needs root, /dev/fuse, /dev/loop-control and fio with its nbd engine;
# prints why and exits 0 where they are missing. BENCH_CK_ROUNDS (default
# 12), BENCH_CK_SECONDS (default 2, each job), BENCH_CK_MIB (default 512),
# BENCH_CK_PIN (default 0). BENCH_CK_OTHER=path/to/another/archip adds a
# fourth daemon, that build checking ("other"), e.g. to compare a change.
set -eu

ARCHIP=${1:-.build/release/archip}
ROUNDS=${BENCH_CK_ROUNDS:-12}
SECS=${BENCH_CK_SECONDS:-2}
MIB=${BENCH_CK_MIB:-512}
PIN=${BENCH_CK_PIN:-0}
OTHER=${BENCH_CK_OTHER:-}
BENCH_NAME=checks
# shellcheck source=scripts/bench-rounds.sh
. "$(dirname "$0")/bench-rounds.sh"

[ "$(id -u)" = 0 ] || skip "not root"
for d in /dev/fuse /dev/loop-control; do [ -e "$d" ] || skip "$d is missing"; done
command -v fio >/dev/null || skip "fio is not installed (make deps)"
fio --enghelp 2>/dev/null | grep -qw nbd || skip "this fio has no nbd engine"
[ -x "$ARCHIP" ] || { echo "bench-checks: $ARCHIP is not an executable" >&2; exit 1; }
[ -z "$OTHER" ] || [ -x "$OTHER" ] || { echo "bench-checks: $OTHER is not an executable" >&2; exit 1; }

MODES="checked unchecked unchecked2"
[ -n "$OTHER" ] && MODES="$MODES other"
nmodes=$(echo $MODES | wc -w)
need=$(( (2 * nmodes + 1) * MIB + 1024 ))
avail=$(awk '/MemAvailable/ { print int($2 / 1024) }' /proc/meminfo)
[ "$avail" -ge "$need" ] || skip "needs $need MiB of memory available for the page cache, has $avail"

ncpu=$(nproc)
DAEMON_CPU="" FIO_CPUS=""
if [ "$PIN" = 1 ] && [ "$ncpu" -ge 2 ] && command -v taskset >/dev/null; then
    DAEMON_CPU=$((ncpu - 1))
    FIO_CPUS="0-$((ncpu - 2))"
fi
pin_daemon() { if [ -n "$DAEMON_CPU" ]; then taskset -c "$DAEMON_CPU" "$@"; else "$@"; fi; }
pin_fio() { if [ -n "$FIO_CPUS" ]; then taskset -c "$FIO_CPUS" "$@"; else "$@"; fi; }

bench_workdir
PLAIN=""
# One daemon per mode, each with its own runtime folder; `attach` starts it
# (and so passes on its CPU affinity).
rt() { printf '%s/run-%s' "$WORK" "$1"; }
as_mode() {
    mode=$1; shift
    case $mode in
        unchecked|unchecked2) ARCHIP_BENCH_UNCHECKED=1 ARCHIP_RUNTIME_DIR=$(rt "$mode") pin_daemon "$ARCHIP" "$@" ;;
        other) ARCHIP_RUNTIME_DIR=$(rt "$mode") pin_daemon "$OTHER" "$@" ;;
        *) ARCHIP_RUNTIME_DIR=$(rt "$mode") pin_daemon "$ARCHIP" "$@" ;;
    esac
}
cleanup() {
    for m in $MODES; do
        for v in loop nbd; do as_mode "$m" detach "$v-$m" >/dev/null 2>&1 || true; done
        if [ -f "$(rt "$m")/serve.pid" ]; then kill "$(cat "$(rt "$m")/serve.pid")" 2>/dev/null || true; fi
    done
    [ -n "$PLAIN" ] && losetup -d "$PLAIN" 2>/dev/null || true
    sleep 1
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

declare -A DEVS URIS
where() {
    case $1 in
        plain) echo "--ioengine=libaio --direct=1 --filename=$PLAIN" ;;
        loop-*) echo "--ioengine=libaio --direct=1 --filename=${DEVS[$1]}" ;;
        nbd-*) echo "--ioengine=nbd --uri=${URIS[$1]}" ;;
    esac
}
# The CPU time (clock ticks, user + system) the daemon serving TARGET used so far.
daemon_ticks() {
    case $1 in
        plain) echo 0 ;;
        *) awk '{ print $14 + $15 }' "/proc/$(cat "$(rt "${1#*-}")/serve.pid")/stat" ;;
    esac
}
# job OUT TARGET NAME RW BS [fio options]: appends "TARGET.NAME bytes/s iops"
# to OUT and "TARGET.NAME daemon-CPU-ticks ios" to OUT.cpu.
job() {
    out=$1 target=$2 name=$3 rw=$4 bs=$5
    shift 5
    t0=$(daemon_ticks "$target")
    # shellcheck disable=SC2046
    r=$(pin_fio fio --name="$name" $(where "$target") --rw="$rw" --bs="$bs" --iodepth=16 --numjobs=1 --size="${MIB}M" \
        --output-format=terse --terse-version=3 "$@" 2>/dev/null | tr -d '\n')
    t1=$(daemon_ticks "$target")
    printf '%s' "$r" | awk -F';' -v n="$target.$name" '{ printf "%s %.0f %.0f\n", n, $7 * 1024, $8 }' >> "$out"
    printf '%s' "$r" | awk -F';' -v n="$target.$name" -v t=$((t1 - t0)) '{ printf "%s %d %.0f\n", n, t, $8 * $9 / 1000 }' >> "$out.cpu"
}

truncate -s "${MIB}M" "$WORK/plain.img"
PLAIN=$(losetup -f --show "$WORK/plain.img")
fio --name=fill --ioengine=libaio --direct=1 --filename="$PLAIN" --rw=write --bs=1M --iodepth=16 --size="${MIB}M" \
    --end_fsync=1 --output-format=terse >/dev/null
for m in $MODES; do
    mkdir -p "$(rt "$m")"
    "$ARCHIP" create "loop-$m" --size "${MIB}M" >/dev/null
    "$ARCHIP" create "nbd-$m" --size "${MIB}M" >/dev/null
    DEVS[loop-$m]=$(as_mode "$m" attach "loop-$m" | sed -n 1p)
    uri=$(as_mode "$m" attach "nbd-$m" | sed -n 2p)
    sock=$(printf '%s' "$uri" | sed -n 's/^nbd:unix:\(.*\):exportname=.*$/\1/p')
    URIS[nbd-$m]="nbd+unix:///nbd-$m?socket=$sock"
    fio --name=fill --ioengine=libaio --direct=1 --filename="${DEVS[loop-$m]}" --rw=write --bs=1M --iodepth=16 \
        --size="${MIB}M" --end_fsync=1 --output-format=terse >/dev/null
    fio --name=fill --ioengine=nbd --uri="${URIS[nbd-$m]}" --rw=write --bs=1M --iodepth=16 --size="${MIB}M" \
        --end_fsync=1 --output-format=terse >/dev/null
done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# The first read since the write, untimed in the rounds: one sample each.
: > "$WORK/first"
: > "$WORK/first.cpu"
for p in nbd loop; do
    for m in $MODES; do job "$WORK/first" "$p-$m" seqread read 1M; done
done

# Round R: plain, then per job and path the daemons in order R of the six
# permutations of the first three modes ("other", if any, last).
PERMS=("checked unchecked unchecked2" "unchecked unchecked2 checked" "unchecked2 checked unchecked"
       "unchecked2 unchecked checked" "checked unchecked2 unchecked" "unchecked checked unchecked2")
TARGETS="plain"
for p in nbd loop; do for m in $MODES; do TARGETS="$TARGETS $p-$m"; done; done
round=1
while [ "$round" -le "$ROUNDS" ]; do
    OUT="$WORK/round.$round"
    : > "$OUT"
    : > "$OUT.cpu"
    order="${PERMS[$(( (round - 1) % 6 ))]}"
    [ -n "$OTHER" ] && order="$order other"
    for j in seqread randread; do
        if [ $j = seqread ]; then rw=read bs=1M; else rw=randread bs=4k; fi
        job "$OUT" plain $j $rw $bs --time_based --runtime="$SECS" --randrepeat=0
        for p in nbd loop; do
            for m in $order; do job "$OUT" "$p-$m" $j $rw $bs --time_based --runtime="$SECS" --randrepeat=0; done
        done
    done
    round=$((round + 1))
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
pinned="no"
[ -n "$DAEMON_CPU" ] && pinned="daemons on CPU $DAEMON_CPU, fio on CPUs $FIO_CPUS"

say "# checked reads on the node data path: fio (iodepth 16, ${MIB} MiB, each job ${SECS} s) on volumes written by fio (owned blocks, in the page cache, read once before), daemons checking / unchecked / unchecked again (A/A), interleaved in $ROUNDS rounds (orders permuted), pinned: $pinned; median of the per-round ratios [interquartile range]; load average $load_before before, $load_after after, $ncpu CPUs"
report checks
python3 - "$WORK" "$ROUNDS" "$MODES" "$(getconf CLK_TCK)" <<'PY' | while IFS= read -r line; do say "$line"; done
import statistics, sys
work, rounds, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
res = {}
for r in range(1, rounds + 1):
    for line in open(f"{work}/round.{r}"):
        name, bw, iops = line.split()
        res.setdefault(name, []).append((int(bw), int(iops)))
first = {}
for line in open(f"{work}/first"):
    name, bw, iops = line.split()
    first[name] = int(bw)

cpu = {}
for r in range(1, rounds + 1):
    for line in open(f"{work}/round.{r}.cpu"):
        name, ticks, ios = line.split()
        cpu.setdefault(name, []).append((int(ticks), int(ios)))
hz = int(sys.argv[4])

def cpu_per_io(name):
    """The daemon's CPU time per request, microseconds, per round."""
    return [t * 1e6 / hz / n for t, n in cpu.get(name, []) if n > 0]

def quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]

for path in ("nbd", "loop"):
    for job, idx in (("seqread", 0), ("randread", 1)):
        base = res.get(f"{path}-unchecked.{job}", [])
        unit = (lambda v: f"{v / 1e6:.0f} MB/s") if idx == 0 else (lambda v: f"{v / 1e3:.1f}k IOPS")
        rows = {}
        for m in modes:
            vals = res.get(f"{path}-{m}.{job}", [])
            if m == "unchecked" or not vals or len(vals) != len(base):
                continue
            ratios = [a[idx] / b[idx] for a, b in zip(vals, base) if b[idx] > 0]
            rows[m] = (statistics.median(x[idx] for x in vals), statistics.median(ratios), quartiles(ratios), ratios)
        if "checked" not in rows:
            continue
        aa = rows.get("unchecked2")
        floor = f"; A/A {aa[1]:.2f} [{aa[2][0]:.2f}-{aa[2][1]:.2f}]" if aa else ""
        med, m, (q1, q3), ratios = rows["checked"]
        verdict = "goal >= 0.9 met" if m >= 0.9 else "goal >= 0.9 NOT MET"
        if aa:
            # Beyond the noise: the checked IQR lies below the A/A one.
            verdict += ", a cost beyond the noise" if q3 < aa[2][0] else ", within the noise"
        ubase = unit(statistics.median(x[idx] for x in base))
        print(f"checks: {path:4} {job:8} checked {unit(med):>12}, unchecked {ubase:>12}: ratio {m:.2f} [{q1:.2f}-{q3:.2f}]{floor} ({verdict})")
        print(f"checks: {path:4} {job:8} per round: {' '.join(f'{r:.2f}' for r in ratios)}")
        if aa:
            print(f"checks: {path:4} {job:8} per round A/A: {' '.join(f'{r:.2f}' for r in aa[3])}")
        if "other" in rows:
            o = rows["other"]
            print(f"checks: {path:4} {job:8} other build checked {unit(o[0]):>12}: ratio {o[1]:.2f} [{o[2][0]:.2f}-{o[2][1]:.2f}]")
        # The daemon's CPU per request: what the checks add, much less
        # sensitive to the machine's load than the throughput.
        c, u, u2 = (cpu_per_io(f"{path}-{m}.{job}") for m in ("checked", "unchecked", "unchecked2"))
        if c and len(c) == len(u):
            cr = [a / b for a, b in zip(c, u) if b > 0]
            line = f"checks: {path:4} {job:8} daemon CPU per request: checked {statistics.median(c):.1f} us, unchecked {statistics.median(u):.1f} us: ratio {statistics.median(cr):.2f} [{quartiles(cr)[0]:.2f}-{quartiles(cr)[1]:.2f}]"
            if u2 and len(u2) == len(u):
                ar = [a / b for a, b in zip(u2, u) if b > 0]
                line += f"; A/A {statistics.median(ar):.2f} [{quartiles(ar)[0]:.2f}-{quartiles(ar)[1]:.2f}]"
            o = cpu_per_io(f"{path}-other.{job}")
            if o and len(o) == len(u):
                orr = [a / b for a, b in zip(o, u) if b > 0]
                line += f"; other build {statistics.median(o):.1f} us, ratio {statistics.median(orr):.2f}"
            print(line)
        if idx == 0 and f"{path}-checked.seqread" in first and first.get(f"{path}-unchecked.seqread"):
            f = first[f"{path}-checked.seqread"] / first[f"{path}-unchecked.seqread"]
            print(f"checks: {path:4} first read since written (one sample): checked {first[f'{path}-checked.seqread'] / 1e6:.0f} MB/s, unchecked {first[f'{path}-unchecked.seqread'] / 1e6:.0f} MB/s: ratio {f:.2f}")
PY
