#!/bin/bash
# How long `archip gc` takes on a pool with many objects, next to one listing
# pass of that pool (RADOS lists a pool only whole: every listing reads every
# object name of the namespace). gc lists a fixed number of times (2; 3 when it
# removes dead layers), where it used to list once per layer.
#
#   gc-listing.sh BIN_DIR rados://POOL?conf=...&id=...
#
# GC_VOLUMES (default 20): volumes, each with a snapshot (2 layers each);
# GC_FILLER_SECONDS (default 5): seconds of `rados bench write -b 4096` into the
# same namespace, for objects that are not the store's but are listed all the same.
set -euo pipefail
BIN=$1
BASE=$2
VOLS=${GC_VOLUMES:-20}
SECS=${GC_FILLER_SECONDS:-5}
UP=$(dirname "$0")/ceph-up.sh
NS=gclist-$$
U="$BASE&ns=$NS"
CONF=$(printf '%s' "$BASE" | sed -n 's/.*conf=\([^&]*\).*/\1/p')
POOL=$(printf '%s' "$BASE" | sed -e 's|^rados://||' -e 's|?.*||')
export CEPH_CONF=$CONF
trap '"$UP" purge "$NS" >/dev/null' EXIT
a() { "$BIN/archip" --store "$U" --node gc "$@"; }
now() { date +%s.%N; }

for i in $(seq "$VOLS"); do
    a create "v$i" --size 4M --block-size 64K >/dev/null
    head -c 256K /dev/urandom | a write "v$i" --offset 0 >/dev/null
    a snapshot "v$i" "v$i-s" >/dev/null
done
rados bench -p "$POOL" -N "$NS" "$SECS" write -b 4096 -t 16 --no-cleanup >/dev/null 2>&1
t=$(now); n=$(rados -p "$POOL" -N "$NS" ls | wc -l); pass=$(echo "$(now) - $t" | bc)
for k in 1 2 3; do
    t=$(now); a gc >/dev/null; echo "$(now) - $t" | bc
done | sort -n | sed -n 2p >"/tmp/gc-listing-$$"
gc=$(cat "/tmp/gc-listing-$$"); rm -f "/tmp/gc-listing-$$"
layers=$((2 * VOLS))
printf 'gc-listing: %d objects in the namespace, %d layers: one listing pass (rados ls) %.2f s; archip gc (dry run, median of 3) %.2f s; gc before (1 pass per layer + 4) would list %d times, about %.1f s of listing\n' \
    "$n" "$layers" "$pass" "$gc" "$((layers + 4))" "$(echo "($layers + 4) * $pass" | bc)"
