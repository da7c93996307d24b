#!/bin/bash
# make bench, scrub (issue 16 section 3, docs/SCRUB.md): 'archip verify --all'
# on a store holding CLONES clones of one image (hashed into content blocks),
# against baselines measured in the same run on the same objects:
#   - cat of every block object into /dev/null (one reader, as the image is read once);
#   - SHA-256 over every block object on all cores (openssl dgst, the same
#     libcrypto archip uses, xargs -P nproc);
#   - 'archip verify gold': the same objects through the image's one snapshot.
# Rows: verify --all vs verifying the image once (goal: about 1, the 1 000
# clones cost nothing), and verify --all throughput vs the slower of cat and
# SHA-256 (goal >= 0.8). The objects are read once first, so every run reads
# from the page cache (no run pays the disk alone), and each is the median of
# ROUNDS. Also: the peak RSS of the scrub.
#
#   scripts/bench-scrub.sh [path/to/archip]
#
# BENCH_SCRUB_MIB (default 256: the issue's 2 GiB takes minutes on a small
# machine), BENCH_SCRUB_CLONES (default 1000), BENCH_SCRUB_ROUNDS (default 3).
set -eu

ARCHIP=${1:-.build/release/archip}
MIB=${BENCH_SCRUB_MIB:-256}
CLONES=${BENCH_SCRUB_CLONES:-1000}
ROUNDS=${BENCH_SCRUB_ROUNDS:-3}
BENCH_NAME=scrub
# shellcheck source=scripts/bench-rounds.sh
. "$(dirname "$0")/bench-rounds.sh"

[ -x "$ARCHIP" ] || { echo "bench-scrub: $ARCHIP is not an executable" >&2; exit 1; }
command -v openssl >/dev/null || skip "openssl is not installed"
bench_workdir

head -c $((MIB << 20)) /dev/urandom > "$WORK/image.raw"
"$ARCHIP" create img --size "${MIB}M" >/dev/null
"$ARCHIP" import img "$WORK/image.raw" >/dev/null
"$ARCHIP" snapshot img gold >/dev/null
"$ARCHIP" hash gold >/dev/null
i=0
while [ $i -lt "$CLONES" ]; do "$ARCHIP" clone gold "c$i" >/dev/null; i=$((i + 1)); done
rm -f "$WORK/image.raw"

objects=$(find "$ARCHIP_STORE/blocks" -type f | wc -l)
find "$ARCHIP_STORE/blocks" -type f -print0 > "$WORK/list"
cores=$(nproc)
now() { date +%s.%N; }
timed() { local t0; t0=$(now); "$@" >/dev/null; python3 -c "print($(now) - $t0)"; }
cat_all() { xargs -0 cat < "$WORK/list" > /dev/null; }
sha_all() { xargs -0 -P "$cores" -n 16 openssl dgst -sha256 < "$WORK/list" > /dev/null; }
verify_one() { "$ARCHIP" verify gold --jobs "$cores" > /dev/null; }
verify_all() { "$ARCHIP" verify --all --restart > /dev/null; }

cat_all   # into the page cache
: > "$WORK/times"
r=1
while [ "$r" -le "$ROUNDS" ]; do
    echo "cat $(timed cat_all)" >> "$WORK/times"
    echo "sha $(timed sha_all)" >> "$WORK/times"
    echo "verify $(timed verify_all)" >> "$WORK/times"
    echo "one $(timed verify_one)" >> "$WORK/times"
    r=$((r + 1))
done
rss=$( { /usr/bin/time -f '%M' "$ARCHIP" verify --all --restart > /dev/null; } 2>&1 | tail -1 )

python3 - "$WORK/times" "$MIB" "$CLONES" "$objects" "$cores" "$rss" <<'PY' | while IFS= read -r line; do say "$line"; done
import statistics, sys
times, mib, clones, objects, cores, rss = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
t = {}
for line in open(times):
    k, v = line.split()
    t.setdefault(k, []).append(float(v))
m = {k: statistics.median(v) for k, v in t.items()}
base = max(m["cat"], m["sha"])
print(f"scrub: {clones} clones of a {mib} MiB image ({objects} content blocks), {cores} cores, median of {len(t['verify'])} rounds, page cache warm")
print(f"scrub.cat     {m['cat']:.2f} s  {mib / m['cat']:.0f} MiB/s  (reading the image's objects once)")
print(f"scrub.sha256  {m['sha']:.2f} s  {mib / m['sha']:.0f} MiB/s  (SHA-256 on {cores} cores)")
print(f"scrub.verify  {m['verify']:.2f} s  {mib / m['verify']:.0f} MiB/s  (archip verify --all: {clones} clones, the image, its snapshot)")
print(f"scrub.verify_image_once  {m['one']:.2f} s  {mib / m['one']:.0f} MiB/s  (archip verify gold: the same objects, one name)")
print(f"scrub.ratio_vs_image_once  {m['one'] / m['verify']:.2f}  (goal about 1: the clones cost nothing)")
print(f"scrub.ratio_vs_cat  {m['cat'] / m['verify']:.2f}  (cat does not hash: the page cache's copy speed)")
print(f"scrub.ratio_vs_slower_baseline  {base / m['verify']:.2f}  (goal >= 0.8)")
print(f"scrub.peak_rss  {int(rss) // 1024} MiB" if rss.isdigit() else f"scrub.peak_rss  unknown ({rss})")
PY
