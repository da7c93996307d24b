#!/bin/bash
# make bench, checked reads (issue 15, docs/CHECKSUMS.md): what checking
# every read costs on the node data path. The same fio read jobs on an
# attached volume's NBD export and loop device (FUSE), served by two node
# daemons of the same build in the same run: one as shipped (checked), one
# started with ARCHIP_BENCH_UNCHECKED=1 (reads unchecked; only the bench sets
# it). The volumes are written by fio first (owned blocks with their 4 KiB
# checksums), so reads come from the page cache and the checks' CPU cost is
# not hidden behind the disk. Rows: checked vs unchecked, median of the
# per-round ratios [min-max] (goal >= 0.9: at most 10% slower), and each
# against the plain loop device as the data-path rows are.
#
#   scripts/bench-checks.sh [path/to/archip]
#
# Needs root, /dev/fuse, /dev/loop-control and fio with its nbd engine;
# prints why and exits 0 where they are missing. BENCH_CK_ROUNDS (default
# 3), BENCH_CK_SECONDS (default 6, each random job), BENCH_CK_MIB (default 1024).
set -eu

ARCHIP=${1:-.build/release/archip}
ROUNDS=${BENCH_CK_ROUNDS:-3}
SECS=${BENCH_CK_SECONDS:-6}
MIB=${BENCH_CK_MIB:-1024}
BENCH_NAME=checks
# shellcheck source=scripts/bench-rounds.sh
. "$(dirname "$0")/bench-rounds.sh"

[ "$(id -u)" = 0 ] || skip "not root"
for d in /dev/fuse /dev/loop-control; do [ -e "$d" ] || skip "$d is missing"; done
command -v fio >/dev/null || skip "fio is not installed (make deps)"
fio --enghelp 2>/dev/null | grep -qw nbd || skip "this fio has no nbd engine"
[ -x "$ARCHIP" ] || { echo "bench-checks: $ARCHIP is not an executable" >&2; exit 1; }

bench_workdir
PLAIN=""
# One daemon per mode, each with its own runtime folder.
rt() { printf '%s/run-%s' "$WORK" "$1"; }
as_mode() {
    mode=$1; shift
    if [ "$mode" = unchecked ]; then
        ARCHIP_BENCH_UNCHECKED=1 ARCHIP_RUNTIME_DIR=$(rt "$mode") "$ARCHIP" "$@"
    else
        ARCHIP_RUNTIME_DIR=$(rt "$mode") "$ARCHIP" "$@"
    fi
}
cleanup() {
    for m in checked unchecked; do
        for v in loop nbd; do as_mode $m detach "$v-$m" >/dev/null 2>&1 || true; done
        if [ -f "$(rt $m)/serve.pid" ]; then kill "$(cat "$(rt $m)/serve.pid")" 2>/dev/null || true; fi
    done
    [ -n "$PLAIN" ] && losetup -d "$PLAIN" 2>/dev/null || true
    sleep 1
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# job TARGET NAME RW BS [fio options]: appends "TARGET.NAME bytes/s iops" to $OUT.
job() {
    target=$1 name=$2 rw=$3 bs=$4
    shift 4
    case $target in
        plain) how="--ioengine=libaio --direct=1 --filename=$PLAIN" ;;
        loop-*) how="--ioengine=libaio --direct=1 --filename=${DEVS[$target]}" ;;
        nbd-*) how="--ioengine=nbd --uri=${URIS[$target]}" ;;
    esac
    # shellcheck disable=SC2086
    fio --name="$name" $how --rw="$rw" --bs="$bs" --iodepth=16 --numjobs=1 --size="${MIB}M" \
        --output-format=terse --terse-version=3 "$@" 2>/dev/null | tr -d '\n' |
        awk -F';' -v n="$target.$name" '{ printf "%s %.0f %.0f\n", n, $7 * 1024, $8 }' >> "$OUT"
}

declare -A DEVS URIS
truncate -s "${MIB}M" "$WORK/plain.img"
PLAIN=$(losetup -f --show "$WORK/plain.img")
fio --name=fill --ioengine=libaio --direct=1 --filename="$PLAIN" --rw=write --bs=1M --iodepth=16 --size="${MIB}M" \
    --end_fsync=1 --output-format=terse >/dev/null
for m in checked unchecked; do
    mkdir -p "$(rt $m)"
    "$ARCHIP" create "loop-$m" --size "${MIB}M" >/dev/null
    "$ARCHIP" create "nbd-$m" --size "${MIB}M" >/dev/null
    DEVS[loop-$m]=$(as_mode $m attach "loop-$m" | sed -n 1p)
    uri=$(as_mode $m attach "nbd-$m" | sed -n 2p)
    sock=$(printf '%s' "$uri" | sed -n 's/^nbd:unix:\(.*\):exportname=.*$/\1/p')
    URIS[nbd-$m]="nbd+unix:///nbd-$m?socket=$sock"
    fio --name=fill --ioengine=libaio --direct=1 --filename="${DEVS[loop-$m]}" --rw=write --bs=1M --iodepth=16 \
        --size="${MIB}M" --end_fsync=1 --output-format=terse >/dev/null
    fio --name=fill --ioengine=nbd --uri="${URIS[nbd-$m]}" --rw=write --bs=1M --iodepth=16 --size="${MIB}M" \
        --end_fsync=1 --output-format=terse >/dev/null
done

run_target() {
    job "$1" seqread read 1M
    job "$1" randread randread 4k --time_based --runtime="$SECS" --randrepeat=0
}
TARGETS="plain nbd-checked nbd-unchecked loop-checked loop-unchecked"
run_rounds

say "# checked reads on the node data path: fio (iodepth 16, ${MIB} MiB, random ${SECS} s) on volumes written by fio (owned blocks, in the page cache), served by a checking daemon and by one with ARCHIP_BENCH_UNCHECKED=1, $ROUNDS rounds in rotated order; median of the per-round ratios [min-max]"
report checks
# Checked against unchecked, per path and job.
python3 - "$WORK" "$ROUNDS" <<'PY' | while IFS= read -r line; do say "$line"; done
import statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
res = {}
for r in range(1, rounds + 1):
    for line in open(f"{work}/round.{r}"):
        name, bw, iops = line.split()
        res.setdefault(name, []).append((int(bw), int(iops)))
for path in ("nbd", "loop"):
    for job, idx in (("seqread", 0), ("randread", 1)):
        on, off = res.get(f"{path}-checked.{job}", []), res.get(f"{path}-unchecked.{job}", [])
        if not on or len(on) != len(off):
            continue
        ratios = [a[idx] / b[idx] for a, b in zip(on, off) if b[idx] > 0]
        m = statistics.median(ratios)
        unit = (lambda v: f"{v / 1e6:.0f} MB/s") if idx == 0 else (lambda v: f"{v / 1e3:.1f}k IOPS")
        print(f"checks: {path:4} {job:8} checked {unit(statistics.median(x[idx] for x in on)):>12}, unchecked {unit(statistics.median(x[idx] for x in off)):>12}: ratio {m:.2f} [{min(ratios):.2f}-{max(ratios):.2f}] (goal >= 0.9{'' if m >= 0.9 else ', NOT MET'})")
        # Round 1 is the first read of the data since fio wrote it (every page
        # checked); later rounds re-read pages the daemon checked before.
        print(f"checks: {path:4} {job:8} per round: {' '.join(f'{r:.2f}' for r in ratios)}")
PY
