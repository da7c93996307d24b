#!/bin/bash
# make bench, rados backend (issue 9): fill and export of a random image
# through the rados backend vs `rados bench` write/seq on the same pool, in the
# same run; snapshot and clone of a 1 TiB volume (one archip process each,
# connect included, 64 MiB written) next to a 1 GiB one.
#
#   scripts/bench-rados.sh [path/to/archip]
#
# Needs root and ceph-mon/ceph-osd (make deps); prints why and exits 0 where
# they are missing. Uses the one-node cluster of tests/e2e/ceph/ceph-up.sh (a
# memstore OSD on loopback: client and OSD share the cores) and brings it down
# afterwards only if it started it. Each run uses a namespace of its own.
# Results are printed and appended to $BENCH_DIR/results.txt (default ./.bench).
# BENCH_RADOS_MIB (default 1024): the image size; BENCH_RADOS_SECONDS (default 5):
# the length of each `rados bench` run.
set -euo pipefail

ARCHIP=${1:-.build/release/archip}
BENCH_DIR=${BENCH_DIR:-$PWD/.bench}
MIB=${BENCH_RADOS_MIB:-1024}
SECS=${BENCH_RADOS_SECONDS:-5}
RESULTS=$BENCH_DIR/results.txt
HERE=$(cd "$(dirname "$0")/.." && pwd)
UP=$HERE/tests/e2e/ceph/ceph-up.sh

say() { printf '%s\n' "$*"; mkdir -p "$BENCH_DIR"; printf '%s\n' "$*" >> "$RESULTS"; }
skip() { say "rados: skipped: $*"; exit 0; }

[ "$(id -u)" = 0 ] || skip "not root"
command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null && command -v rados >/dev/null ||
    skip "ceph-mon/ceph-osd/rados not installed (make deps)"

started=0
"$UP" status >/dev/null 2>&1 || started=1
BASE=$("$UP" up)
[ $started = 1 ] && trap '"$UP" down' EXIT
export CEPH_CONF=${CEPH_CONF:-/var/tmp/archip-ceph/ceph.conf}
POOL=$(printf '%s' "$BASE" | sed -e 's|^rados://||' -e 's|?.*||')
NS=bench-$$
URL="$BASE&ns=$NS"
WORK=$BENCH_DIR/rados
mkdir -p "$WORK"
IMG=$WORK/image.raw
OUT=$WORK/export.raw
# Everything this run stored goes at the end (memstore keeps it in the OSD's memory).
cleanup() {
    rm -f "$IMG" "$OUT"
    rados -p "$POOL" -N "$NS" ls 2>/dev/null | xargs -r rados -p "$POOL" -N "$NS" rm 2>/dev/null || true
    if [ $started = 1 ]; then "$UP" down; fi
}
trap cleanup EXIT
STORE=$(sed -n 's/^osd objectstore = //p' "$CEPH_CONF" 2>/dev/null)

now() { date +%s.%N; }
mbs() { echo "scale=0; $MIB * 1048576 / 1000000 / $1" | bc; }
ratio() { echo "scale=2; $1 / $2" | bc | sed 's/^\./0./'; }
bench_mbs() { sed -n 's/^Bandwidth (MB\/sec): *\([0-9.]*\).*/\1/p' | head -1 | cut -d. -f1; }
a() { "$ARCHIP" --store "$URL" --node bench "$@"; }

head -c $((MIB << 20)) /dev/urandom >"$IMG"
say "# rados backend: ${MIB} MiB random image, pool $POOL namespace $NS, $(nproc) cores (client and one ${STORE:-?} OSD on them)"

# rados bench: 16 x 4 MiB ops in flight (its default), same pool and namespace.
w=$(rados bench -p "$POOL" -N "$NS" "$SECS" write --no-cleanup 2>/dev/null | bench_mbs)
s=$(rados bench -p "$POOL" -N "$NS" "$SECS" seq 2>/dev/null | bench_mbs)
rados -p "$POOL" -N "$NS" cleanup >/dev/null 2>&1

sync
t=$(now); a fill vol --from "file:$IMG" --progress none >/dev/null; t=$(echo "$(now) - $t" | bc)
fill=$(mbs "$t")
say "rados: fill ${MIB} MiB $(printf '%.2f' "$t") s = $fill MB/s vs rados bench write $w MB/s: $(ratio "$fill" "$w")x"

# Export to a file is bounded by the output file (page cache, then writeback
# to $BENCH_DIR's disk): measure a plain copy of the image there too.
# On this VM the kernel's copy into fresh page-cache pages is now and then
# several times slower (perf: copy_folio_from_iter_atomic), for export and cp
# alike: each is the median of 3.
med3() { sort -n | sed -n 2p; }
ts=() cs=() ns=()
for i in 1 2 3; do
    rm -f "$OUT"; sync
    t=$(now); a export vol "$OUT"; ts+=("$(echo "$(now) - $t" | bc)")
    [ $i = 1 ] && { cmp -s "$IMG" "$OUT" || { say "rados: FAIL: the exported volume differs from the image"; exit 1; }; }
    rm -f "$OUT"; sync
    t=$(now); cat "$IMG" >"$OUT"; cs+=("$(echo "$(now) - $t" | bc)")
    t=$(now); a export vol /dev/null; ns+=("$(echo "$(now) - $t" | bc)")
done
rm -f "$OUT"
exp=$(mbs "$(printf '%s\n' "${ts[@]}" | med3)")
cpy=$(mbs "$(printf '%s\n' "${cs[@]}" | med3)")
null=$(mbs "$(printf '%s\n' "${ns[@]}" | med3)")
say "rados: export ${MIB} MiB to /dev/null $null MB/s vs rados bench seq $s MB/s: $(ratio "$null" "$s")x (median of 3)"
say "rados: export ${MIB} MiB to a file $exp MB/s vs rados bench seq $s MB/s: $(ratio "$exp" "$s")x; cat of the image to the same folder: $cpy MB/s (median of 3)"

# Snapshot and clone: one archip process each (connect included), median of 5.
med() { sort -n | sed -n 3p; }
for size in 1G 1T; do
    a create "big-$size" --size "$size" >/dev/null
    head -c 64M "$IMG" | a write "big-$size" --offset 0 >/dev/null
    snaps=() clones=()
    for i in 1 2 3 4 5; do
        t=$(now); a snapshot "big-$size" "snap-$size-$i" >/dev/null; snaps+=("$(echo "($(now) - $t) * 1000" | bc)")
        t=$(now); a clone "snap-$size-$i" "clone-$size-$i" >/dev/null; clones+=("$(echo "($(now) - $t) * 1000" | bc)")
    done
    say "rados: $size volume: snapshot $(printf '%s\n' "${snaps[@]}" | med | cut -d. -f1) ms, clone $(printf '%s\n' "${clones[@]}" | med | cut -d. -f1) ms (median of 5, one archip process each)"
done
