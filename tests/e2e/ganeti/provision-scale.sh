#!/bin/bash
# Provisioning at scale through a real Ganeti: N instances (GNT_SCALE_N,
# default 50) from one golden snapshot, submitted the way Ganeti runs them
# (`gnt-instance add ... --submit` for all, then wait for the jobs). Checks
# that every job succeeds, every instance's disk is an O(1) clone that reads
# the snapshot's bytes, and the store grows by the new layers only (no block
# is copied). Reports per instance the whole add (the job's start to end) and
# the provider's share of it (its create, attach, open ... calls, from their
# `ok in N ms` log lines), then removes everything the same way.
# Root; the lab of README.md (network namespace, fake hypervisor). Ends with
# "N passed, N failed"; exit 1 on any failure.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
case ${1:-} in -h|--help) gnt_usage "$0"; exit 0;; esac
gnt_clean_env "$0" "$@"
need_root
cd /

HERE=$GNT_LAB_DIR
. "$GNT_LAB_DIR/checks.sh"
need_bins archip archip-extstorage
N=${GNT_SCALE_N:-50}
W=$(mktemp -d /var/tmp/gnt-scale.XXXXXX)
STORE=$W/store RUN=$W/run CONF=$W/archip.conf PDIR=$W/extstorage/archipelago
gnt() { nsx "$@"; }
name() { printf 'scale%03d.%s' "$1" "$GNT_DOMAIN"; }

log "provisioning $N instances from one snapshot; work folder $W"
mkdir -p "$STORE"
printf '[store]\npath = %s\n[node]\nname = %s\nruntime_dir = %s\n' "$STORE" "$GNT_NODE_NAME" "$RUN" > "$CONF"
run "install the provider" "$REPO/scripts/install-extstorage.sh" "$PDIR" "$BIN" "$CONF" || exit 1
# The golden image: 64 MiB of a pattern, snapshot golden-v1.
python3 -c "import sys,hashlib; sys.stdout.buffer.write(b''.join(hashlib.sha256(str(i).encode()).digest()*128 for i in range(16384)))" > "$W/image.raw"
run "import the image and snapshot it" bash -c "'$BIN/archip' --store '$STORE' import golden '$W/image.raw' && '$BIN/archip' --store '$STORE' snapshot golden golden-v1" || exit 1
IMG_SHA=$(sha256sum "$W/image.raw" | cut -d' ' -f1)
IMG_SIZE=$(stat -c %s "$W/image.raw")
touch "$W/t0"
setsid "$BIN/archip" serve --config "$CONF" > "$W/serve.log" 2>&1 < /dev/null &
SERVE_PID=$!
for _ in $(seq 100); do [[ -S $RUN/control.sock ]] && break; sleep 0.1; done
stop_serve() { kill -TERM "$SERVE_PID" 2>/dev/null; for _ in $(seq 100); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done; }
trap stop_serve EXIT
run "cluster-up.sh archipelago=$PDIR" "$HERE/cluster-up.sh" "archipelago=$PDIR" || { echo "$passed passed, $failed failed"; exit 1; }
for i in $(seq "$N"); do gnt gnt-instance remove -f "$(name "$i")" >/dev/null 2>&1; done

count() { find "$STORE/$1" -type f 2>/dev/null | wc -l; }
blocks0=$(count blocks) layers0=$(find "$STORE/layers" -mindepth 1 -maxdepth 1 -type d | wc -l)

# --- submit all, then wait ----------------------------------------------------------
t_submit=$(date +%s.%N)
: > "$W/jobs"
for i in $(seq "$N"); do
  gnt gnt-instance add --submit -t ext \
    --disk "0:size=2G,provider=archipelago,origin=snapshot:golden-v1,origin_size=$IMG_SIZE,origin_sha256=$IMG_SHA" \
    -o "$GNT_OS_NAME" --no-name-check --no-ip-check -H fake -n "$GNT_NODE_NAME" "$(name "$i")" >> "$W/submit.out" 2>&1
done
# `--submit` prints "JobID: N" (on stderr in 3.1, with deprecation warnings around it).
job_ids() { sed -n 's/^JobID: *\([0-9][0-9]*\)$/\1/p' "$1"; }
job_ids "$W/submit.out" > "$W/jobs"
check "$N jobs submitted" bash -c "[[ \$(wc -l < '$W/jobs') == $N ]]"
for j in $(cat "$W/jobs"); do gnt gnt-job wait "$j" >/dev/null 2>&1; done
t_done=$(date +%s.%N)
gnt gnt-job list --no-headers -o id,status $(cat "$W/jobs") > "$W/job-status" 2>&1
check "every add job succeeded" bash -c "[[ \$(awk '\$2 == \"success\"' '$W/job-status' | wc -l) == $N ]]"
check "$N instances run" bash -c "[[ \$(ip netns exec $GNT_NETNS gnt-instance list --no-headers -o name,status | grep -c '^scale.* running\$') == $N ]]"

# --- every disk: an O(1) clone that reads the snapshot ---------------------------------
"$BIN/archip" --store "$STORE" list --json > "$W/list.json"
check "$N volumes, each a clone of golden-v1" bash -c "[[ \$(python3 -c 'import json,sys; print(sum(1 for v in json.load(open(sys.argv[1])) if v[\"name\"].endswith(\".ext.disk0\") and v[\"parent\"] == \"golden-v1\"))' '$W/list.json') == $N ]]"
bad_reads=0 devs=0
for dev in $("$BIN/archip" attached --runtime-dir "$RUN" --json | python3 -c "import json,sys; print(' '.join(a['device'] for a in json.load(sys.stdin) if a['name'].endswith('.ext.disk0')))"); do
  # The noop OS stamps the first MiB; the rest is the image's.
  devs=$((devs + 1))
  cmp -s <(tail -c +1048577 "$W/image.raw") <(dd if="$dev" bs=1M skip=1 count=$(( IMG_SIZE / 1048576 - 1 )) status=none) || bad_reads=$((bad_reads + 1))
done
check "all $N instances' devices ($devs) read the snapshot's bytes" test "$bad_reads/$devs" == "0/$N"
check "the store grew by $N layers and no block" bash -c "[[ \$(find '$STORE/layers' -mindepth 1 -maxdepth 1 -type d | wc -l) == $(( layers0 + N )) && \$(find '$STORE/blocks' -type f | wc -l) == $blocks0 ]]"
check "the image was read once for its checksum, then the record was used" bash -c "[[ \$(find /var/log/ganeti/extstorage -name 'create-*' -newer '$W/t0' -exec grep -l 'bytes read in' {} + | wc -l) == 1 ]]"

# --- figures: the whole add per instance, the provider's share ---------------------------
python3 - "$W" "$N" "$t_submit" "$t_done" <<'PY' | tee "$W/figures.txt" >&2
import glob, json, os, re, subprocess, sys
w, n, t0, t1 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
newer = os.path.getmtime(os.path.join(w, "t0"))
per_call, per_volume = {}, {}
for f in glob.glob("/var/log/ganeti/extstorage/*"):
    if os.path.getmtime(f) < newer: continue
    base = os.path.basename(f)
    action = base.split("-")[0]
    vol = re.match(r"[a-z]+-archipelago-(.*)-\d{4}-\d\d-\d\d_", base)
    for m in re.finditer(r"ok in (\d+) ms", open(f, errors="replace").read()):
        per_call.setdefault(action, []).append(int(m.group(1)))
        if vol: per_volume[vol.group(1)] = per_volume.get(vol.group(1), 0) + int(m.group(1))
med = lambda xs: sorted(xs)[len(xs) // 2] if xs else 0
# Each add job's own time, from Ganeti's job files (received, start and end timestamps).
jobs = []
for jid in open(os.path.join(w, "jobs")).read().split():
    for path in glob.glob("/var/lib/ganeti/queue/job-%s" % jid) + glob.glob("/var/lib/ganeti/queue/archive/*/job-%s" % jid):
        try:
            j = json.load(open(path))
            ts = lambda k: j[k][0] + j[k][1] / 1e6
            jobs.append((ts("end_timestamp") - ts("start_timestamp"), ts("end_timestamp") - ts("received_timestamp")))
        except Exception:
            pass
        break
if jobs:
    run = [a for a, _ in jobs]; total = [b for _, b in jobs]
    pv = sorted(per_volume.values())
    print(f"  per instance: the add job runs median {med(run):.2f} s (max {max(run):.2f}), {med(total):.2f} s with its time in the queue; "
          f"the provider's calls for its volume median {med(pv) / 1000:.3f} s (max {max(pv) / 1000 if pv else 0:.3f}) = "
          f"{100 * med(pv) / 1000 / med(run):.1f}% of the job's run")
else:
    print("  per instance: no job file found under /var/lib/ganeti/queue (archived?)")
total = sum(sum(v) for v in per_call.values())
wall = t1 - t0
print(f"provisioning {n} instances from one snapshot: {wall:.1f} s from the first submit to the last job's end, {wall / n:.2f} s per instance")
print(f"  provider calls: {sum(len(v) for v in per_call.values())}, {total / 1000:.1f} s in all = {total / 1000 / n:.3f} s per instance ({100 * total / 1000 / wall:.1f}% of the wall time)")
for a in sorted(per_call):
    print(f"  {a:<8} {len(per_call[a]):4d} calls, median {med(per_call[a]):5d} ms, max {max(per_call[a]):5d} ms")
PY

# --- remove all, the same way ---------------------------------------------------------------
: > "$W/remove.out"
for i in $(seq "$N"); do gnt gnt-instance remove --submit -f "$(name "$i")" >> "$W/remove.out" 2>&1; done
for j in $(job_ids "$W/remove.out"); do gnt gnt-job wait "$j" >/dev/null 2>&1; done
check "every instance is removed" bash -c "[[ \$(ip netns exec $GNT_NETNS gnt-instance list --no-headers -o name | grep -c '^scale') == 0 ]]"
check "no instance volume is left in the store" bash -c "[[ \$('$BIN/archip' --store '$STORE' list --json | python3 -c 'import json,sys; print(sum(1 for v in json.load(sys.stdin) if \".ext.disk\" in v[\"name\"]))') == 0 ]]"
check "golden-v1 verifies" "$BIN/archip" --store "$STORE" verify golden-v1
stop_serve
if [[ ${GNT_KEEP:-no} != yes ]]; then run "cluster-down.sh" "$HERE/cluster-down.sh"; fi
echo "$passed passed, $failed failed"
if [[ $failed == 0 ]]; then cp "$W/figures.txt" /var/tmp/gnt-scale-figures.txt; rm -rf "$W"; exit 0; fi
log "logs kept in $W"; exit 1
