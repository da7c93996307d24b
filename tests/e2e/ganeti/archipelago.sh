#!/bin/bash
# End-to-end test of the archipelago provider in a real single-node Ganeti 3.1
# (or 3.0) cluster (fake hypervisor, ext template, network namespace; see README.md):
#   instance add from an in-store snapshot (O(1) clone), grow-disk while
#   running, modify --disk add (snf-vol-N), shutdown, activate-disks, modify
#   --disk remove while the disks are active, deactivate-disks, startup,
#   gnt-backup export (compared with the store's own export), on 3.1 a disk
#   detached from a running instance and attached to another running one
#   (what one wrote, the other reads), instance remove, checksummed adds
#   (origin_sha256 wrong and right, a bare-name origin, a file: origin); every
#   step checked in the store (volumes, metadata, holds) and on
#   the node (loop devices).
# The node daemon runs as production runs it: started first, in the host's
# namespaces (as archip-serve.service would), while every gnt-* command runs
# through `ip netns exec` (a mount namespace of its own each, copied from the
# host's while volumes are attached). Every detach must end in under 5 s.
# Root. Needs the debug or release build: GNT_ARCHIP_BIN=DIR holding archip and
# archip-extstorage (default: the repo's .build/debug).
# Ends with "N passed, N failed"; exit 1 on any failure. GNT_KEEP=yes leaves the
# cluster up.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
case ${1:-} in -h|--help) gnt_usage "$0"; exit 0;; esac
gnt_clean_env "$0" "$@"
need_root
cd /

HERE=$GNT_LAB_DIR
. "$GNT_LAB_DIR/checks.sh"
need_bins archip archip-extstorage
W=$(mktemp -d /var/tmp/gnt-archip.XXXXXX)
STORE=$W/store RUN=$W/run CONF=$W/archip.conf PDIR=$W/extstorage/archipelago
I1=arch1.$GNT_DOMAIN
gnt() { nsx "$@"; }
archip() { "$BIN/archip" --store "$STORE" "$@"; }
vols() { archip list --json | python3 -c "import json,sys; print(' '.join(sorted(v['name'] for v in json.load(sys.stdin) if v['kind']=='volume' and v['name'].count('.ext.disk'))))"; }
# The provider's calls with a log file (all but attach), oldest first, since FILE.
calls_since() { find /var/log/ganeti/extstorage -type f -newer "$1" -printf '%T@ %f\n' | sort -n | sed -E 's/^[^ ]+ ([a-z]+)-archipelago-.*/\1/' | tr '\n' ' '; }
attached_dev() { "$BIN/archip" attached --runtime-dir "$RUN" --json 2>/dev/null | python3 -c "import json,sys; print(next((a['device'] for a in json.load(sys.stdin) if a['name']=='$1'),''))"; }

log "archipelago provider in a Ganeti cluster; work folder $W"
mkdir -p "$STORE"
mkdir -p "$W/images"
printf '[store]\npath = %s\n[node]\nname = %s\nruntime_dir = %s\n[fill]\nimage_dirs = %s\n' "$STORE" "$GNT_NODE_NAME" "$RUN" "$W/images" > "$CONF"
run "install the provider (scripts/install-extstorage.sh)" "$REPO/scripts/install-extstorage.sh" "$PDIR" "$BIN" "$CONF" || exit 1
# An image in the store: 24 MiB of a pattern, snapshot debian-img-v1.
python3 -c "import sys,hashlib; sys.stdout.buffer.write(b''.join(hashlib.sha256(str(i).encode()).digest()*128 for i in range(6144)))" > "$W/image.raw"
run "import the image and snapshot it" bash -c "'$BIN/archip' --store '$STORE' import debian-img '$W/image.raw' && '$BIN/archip' --store '$STORE' snapshot debian-img debian-img-v1" || exit 1

touch "$W/t0"   # provider logs newer than this are this run's
# The node daemon first, in the host's namespaces, as systemd starts it.
setsid "$BIN/archip" serve --config "$CONF" > "$W/serve.log" 2>&1 < /dev/null &
SERVE_PID=$!
for _ in $(seq 100); do [[ -S $RUN/control.sock ]] && break; sleep 0.1; done
check "archip serve runs in the host's namespaces, not the cluster's" \
  bash -c "[[ -S '$RUN/control.sock' && \$(readlink /proc/$SERVE_PID/ns/net) == \"\$(readlink /proc/self/ns/net)\" && -z \$(ip netns identify $SERVE_PID) ]]"
stop_serve() { kill -TERM "$SERVE_PID" 2>/dev/null; for _ in $(seq 100); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done; }
trap stop_serve EXIT

run "cluster-up.sh archipelago=$PDIR" "$HERE/cluster-up.sh" "archipelago=$PDIR" || { echo "$passed passed, $failed failed"; exit 1; }
gnt gnt-instance list --no-headers -o name 2>/dev/null | grep -qx "$I1" && gnt gnt-instance remove -f "$I1" >/dev/null 2>&1
gnt gnt-backup remove "$I1" >/dev/null 2>&1
check "gnt-storage diagnose: archipelago valid" \
  bash -c "ip netns exec $GNT_NETNS gnt-storage diagnose | grep -A2 '^Provider: archipelago\$' | grep -q 'status: valid'"

# --- add from a snapshot ----------------------------------------------------------
run "gnt-instance add -t ext --disk 0:size=1G,provider=archipelago,origin=snapshot:debian-img-v1" \
  gnt gnt-instance add -t ext --disk "0:size=1G,provider=archipelago,origin=snapshot:debian-img-v1" \
  -o "$GNT_OS_NAME" --no-name-check --no-ip-check -H fake -n "$GNT_NODE_NAME" "$I1"
V0=$(vols | tr ' ' '\n' | grep 'ext.disk0$' | head -n1)
check "disk 0 is a volume UUID.ext.disk0 in the store" grep -Eq '^[0-9a-f-]{36}\.ext\.disk0$' <<<"$V0"
check "disk 0 is a 1 GiB clone of debian-img-v1" bash -c "[[ \$('$BIN/archip' --store '$STORE' info '$V0' --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[\"size\"], d[\"parent\"])') == '1073741824 debian-img-v1' ]]"
DUUID=$(gnt gnt-instance info --static "$I1" | awk '/^ *- disk\/0/{f=1} f && /UUID:/ {print $2; exit}')
check "disk 0 records Ganeti's disk UUID ($DUUID)" bash -c "[[ -n '$DUUID' && \$('$BIN/archip' --store '$STORE' info '$V0' --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"metadata\"].get(\"ganeti.uuid\",\"\"))') == '$DUUID' ]]"
check "setinfo stored originstname+$I1" bash -c "[[ \$('$BIN/archip' --store '$STORE' info '$V0' --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"metadata\"].get(\"ganeti.info\",\"\"))') == 'originstname+$I1' ]]"
check "the running instance holds disk 0 exclusively" bash -c "[[ \$('$BIN/archip' --store '$STORE' info '$V0' --json | python3 -c 'import json,sys; l=json.load(sys.stdin)[\"lock\"]; print(l[\"mode\"])') == exclusive ]]"
D0=$(attached_dev "$V0")
check "disk 0 is attached as a loop device ($D0)" test -b "$D0"
# The noop OS stamped the start of disk 0; the rest is the image's.
check "the OS stamp and the image's bytes are on the device" bash -c "head -c 64 '$D0' | grep -aq 'ganeti-noop:$I1' && cmp -s <(tail -c +1048577 '$W/image.raw') <(dd if='$D0' bs=1M skip=1 count=23 status=none)"

# --- grow while running ---------------------------------------------------------
run "gnt-instance grow-disk $I1 0 1G (running)" gnt gnt-instance grow-disk "$I1" 0 1G
check "disk 0 is 2 GiB in the store" bash -c "[[ \$('$BIN/archip' --store '$STORE' info '$V0' --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"size\"])') == 2147483648 ]]"
check "the loop device sees 2 GiB without a reattach" bash -c "[[ \$(blockdev --getsize64 '$D0') == 2147483648 ]]"

# --- add and remove a named disk ------------------------------------------------
run "gnt-instance modify --disk add:size=512M,provider=archipelago,name=snf-vol-7" \
  gnt gnt-instance modify --disk add:size=512M,provider=archipelago,name=snf-vol-7 "$I1"
V1=$(vols | tr ' ' '\n' | grep -v "^$V0\$" | head -n1)
check "the new disk ($V1) is recorded as snf-vol-7" bash -c "[[ -n '$V1' && \$('$BIN/archip' --store '$STORE' info '$V1' --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"metadata\"].get(\"ganeti.cname\",\"\"))') == snf-vol-7 ]]"

# --- stop, activate, remove a disk while active, deactivate, start ------------------
# The sequence that once held detaches for ten minutes: gnt-* commands' own
# mount namespaces held copies of the daemon's FUSE mounts.
run "gnt-instance shutdown" gnt gnt-instance shutdown "$I1"
check "after shutdown no hold is left on disk 0" bash -c "'$BIN/archip' --store '$STORE' info '$V0' --json | python3 -c 'import json,sys; l=json.load(sys.stdin).get(\"lock\"); sys.exit(1 if l and l.get(\"holders\") else 0)'"
check "after shutdown disk 0 is detached" bash -c "[[ -z \$('$BIN/archip' attached --runtime-dir '$RUN' --json | python3 -c 'import json,sys; print(\" \".join(a[\"name\"] for a in json.load(sys.stdin) if a[\"name\"]==\"$V0\"))') ]]"
run "gnt-instance activate-disks (two disks)" gnt gnt-instance activate-disks "$I1"
check "activate-disks holds disk 0" bash -c "[[ \$('$BIN/archip' --store '$STORE' info '$V0' --json | python3 -c 'import json,sys; l=json.load(sys.stdin)[\"lock\"]; print(l[\"mode\"])') == exclusive ]]"
check "activate-disks attached snf-vol-7 too" bash -c "[[ -n \$('$BIN/archip' attached --runtime-dir '$RUN' --json | python3 -c 'import json,sys; print(\" \".join(a[\"name\"] for a in json.load(sys.stdin) if a[\"name\"]==\"$V1\"))') ]]"
run "gnt-instance modify --disk snf-vol-7:remove (disks active, instance stopped)" gnt gnt-instance modify --disk snf-vol-7:remove "$I1"
check "snf-vol-7's volume is gone from the store" bash -c "! '$BIN/archip' --store '$STORE' info '$V1' >/dev/null 2>&1"
run "gnt-instance deactivate-disks" gnt gnt-instance deactivate-disks "$I1"
run "gnt-instance startup" gnt gnt-instance startup "$I1"

# --- export: snapshot, read VOL_NAME.snap, remove it ----------------------------
run "gnt-backup export (instance running)" gnt gnt-backup export --noshutdown -n "$GNT_NODE_NAME" "$I1"
EXP=/var/lib/ganeti/export/$I1
DUMP=$(ls "$EXP" 2>/dev/null | grep -v config.ini | head -n1)
run "archip export of disk 0" "$BIN/archip" --store "$STORE" export "$V0" "$W/disk0.raw"
check "the exported disk equals the volume" cmp -s "$EXP/$DUMP" "$W/disk0.raw"
check "the export snapshot $V0.snap was removed" bash -c "! '$BIN/archip' --store '$STORE' info '$V0.snap' >/dev/null 2>&1"
gnt gnt-backup remove "$I1" >/dev/null 2>&1

# --- detach and attach (Ganeti 3.1): a disk moves between running instances ---------
I2=arch2.$GNT_DOMAIN
GV=$(gnt gnt-cluster version | awk '/^Software version/ {print $3}')
if [[ $GV == 3.0* ]]; then
  log "SKIP detach/attach: Ganeti $GV cannot attach ext disks (3.1 can)"
else
  gnt gnt-instance list --no-headers -o name 2>/dev/null | grep -qx "$I2" && gnt gnt-instance remove -f "$I2" >/dev/null 2>&1
  run "gnt-instance add $I2 (a second instance, running)" \
    gnt gnt-instance add -t ext --disk "0:size=1G,provider=archipelago,origin=snapshot:debian-img-v1" -o "$GNT_OS_NAME" --no-name-check --no-ip-check -H fake -n "$GNT_NODE_NAME" "$I2"
  run "gnt-instance modify --disk add:size=256M,provider=archipelago,name=snf-vol-8 $I1 (running)" \
    gnt gnt-instance modify --disk add:size=256M,provider=archipelago,name=snf-vol-8 "$I1"
  V8=$(archip list --json | python3 -c "import json,sys; print(next((v['name'] for v in json.load(sys.stdin) if v['metadata'].get('ganeti.cname')=='snf-vol-8'), ''))")
  D8=$(attached_dev "$V8")
  python3 -c "import sys; sys.stdout.buffer.write(bytes((i * 13 + 5) % 256 for i in range(1 << 20)))" > "$W/pattern"
  run "write 1 MiB through $I1's device for snf-vol-8 ($D8)" dd if="$W/pattern" of="$D8" bs=1M seek=2 oflag=direct conv=notrunc,fsync status=none
  touch "$W/t1"
  run "gnt-instance modify --disk snf-vol-8:detach $I1 (running, no hotplug in the fake hypervisor)" gnt gnt-instance modify --disk snf-vol-8:detach "$I1"
  C1=$(calls_since "$W/t1")
  check "the detach reached the provider (its calls: $C1)" grep -qw detach <<<"$C1"
  check "snf-vol-8 is detached on the node, no hold left, still in the store" bash -c "[[ -z \$('$BIN/archip' attached --runtime-dir '$RUN' --json | python3 -c 'import json,sys; print(\" \".join(a[\"name\"] for a in json.load(sys.stdin) if a[\"name\"]==\"$V8\"))') ]] && '$BIN/archip' --store '$STORE' info '$V8' --json | python3 -c 'import json,sys; l=json.load(sys.stdin).get(\"lock\"); sys.exit(1 if l and l.get(\"holders\") else 0)'"
  check "$I1 no longer lists snf-vol-8" bash -c "[[ \$(ip netns exec $GNT_NETNS gnt-instance list --no-headers -o disk.count $I1 | tr -d ' ') == 1 ]]"
  touch "$W/t2"
  run "gnt-instance modify --disk attach:name=snf-vol-8 $I2 (running)" gnt gnt-instance modify --disk attach:name=snf-vol-8 "$I2"
  D8B=$(attached_dev "$V8")
  check "$I2 holds snf-vol-8 as its disk 1, attached on the node ($D8B), exclusively" bash -c "[[ \$(ip netns exec $GNT_NETNS gnt-instance list --no-headers --separator=' ' -o disk.names $I2) == *snf-vol-8* && -b '$D8B' && \$('$BIN/archip' --store '$STORE' info '$V8' --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"lock\"][\"mode\"])') == exclusive ]]"
  check "$I2's device reads back what $I1 wrote" bash -c "dd if='$D8B' bs=1M skip=2 count=1 iflag=direct status=none | cmp - '$W/pattern'"
  log "provider calls with a log file: detach from $I1: $C1; attach to $I2: $(calls_since "$W/t2")"
  run "gnt-instance remove -f $I2 (with snf-vol-8)" gnt gnt-instance remove -f "$I2"
  check "snf-vol-8 left the store with $I2" bash -c "! '$BIN/archip' --store '$STORE' info '$V8' >/dev/null 2>&1"
fi

# --- remove -----------------------------------------------------------------------
run "gnt-instance remove -f" gnt gnt-instance remove -f "$I1"
check "no instance volume is left in the store" bash -c "[[ -z \$('$BIN/archip' --store '$STORE' list --json | python3 -c 'import json,sys; print(\" \".join(v[\"name\"] for v in json.load(sys.stdin) if \".ext.disk\" in v[\"name\"]))') ]]"
check "nothing is attached on the node" bash -c "[[ \$('$BIN/archip' attached --runtime-dir '$RUN' --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') == 0 ]]"
check "the image snapshot is intact (archip verify)" "$BIN/archip" --store "$STORE" verify debian-img-v1

# --- checksummed provisioning: origin_sha256, bare names ---------------------------
# What Cyclades sends for an image registered with its checksum; a stock
# Synnefo sends the bare snapshot name. A wrong checksum must fail the add with
# the provider's line in Ganeti's error, and leave nothing in the store.
I2=arch2.$GNT_DOMAIN
cp "$W/image.raw" "$W/images/image.raw"
IMG_SHA=$(sha256sum "$W/image.raw" | cut -d' ' -f1)
IMG_SIZE=$(stat -c %s "$W/image.raw")
WRONG=$(printf '%064d' 0)
add2() { gnt gnt-instance add -t ext --disk "0:size=1G,provider=archipelago,$1" -o "$GNT_OS_NAME" --no-name-check --no-ip-check -H fake -n "$GNT_NODE_NAME" "$I2"; }
for origin in "origin=snapshot:debian-img-v1,origin_size=$IMG_SIZE" "origin=file:$W/images/image.raw"; do
  out=$(add2 "$origin,origin_sha256=$WRONG" 2>&1); rc=$?
  check "add with a wrong origin_sha256 fails (${origin%%,*})" test "$rc" -ne 0
  check "Ganeti shows the provider's one line naming both digests (${origin%%,*})" bash -c "grep -q 'expected $WRONG' <<<\"\$1\" && grep -q '$IMG_SHA' <<<\"\$1\"" _ "$out"
  check "no volume and no fill checkpoint is left (${origin%%,*})" bash -c "[[ -z \$('$BIN/archip' --store '$STORE' list --json 2>/dev/null | python3 -c 'import json,sys; print(\" \".join(v[\"name\"] for v in json.load(sys.stdin) if \".ext.disk\" in v[\"name\"]))') && ! -e '$STORE/fills' || -z \$(ls -A '$STORE/fills' 2>/dev/null) ]]"
  gnt gnt-instance list --no-headers -o name 2>/dev/null | grep -qx "$I2" && gnt gnt-instance remove -f "$I2" >/dev/null 2>&1
done
run "gnt-instance add origin=debian-img-v1 (bare name) with the right origin_sha256" add2 "origin=debian-img-v1,origin_size=$IMG_SIZE,origin_sha256=$IMG_SHA"
check "debian-img-v1 records the match" bash -c "[[ \$('$BIN/archip' --store '$STORE' info debian-img-v1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"metadata\"].get(\"content.sha256\",\"\"))') == '$IMG_SIZE $IMG_SHA' ]]"
V2=$(vols | tr ' ' '\n' | grep 'ext.disk0$' | head -n1)
check "the bare name gave an O(1) clone of debian-img-v1" bash -c "[[ \$('$BIN/archip' --store '$STORE' info '$V2' --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"parent\"])') == debian-img-v1 ]]"
run "gnt-instance remove -f $I2" gnt gnt-instance remove -f "$I2"
run "gnt-instance add origin=file: with the right origin_sha256 (filled, hashed)" add2 "origin=file:$W/images/image.raw,origin_sha256=$IMG_SHA"
V2=$(vols | tr ' ' '\n' | grep 'ext.disk0$' | head -n1)
check "the filled disk holds the image (after the noop OS's stamp)" bash -c "cmp -s <(tail -c +1048577 '$W/image.raw') <('$BIN/archip' --store '$STORE' read '$V2' --offset 1048576 --length $((IMG_SIZE - 1048576)))"
run "gnt-instance remove -f $I2" gnt gnt-instance remove -f "$I2"

# Every detach the daemon did, and every one the provider reported to Ganeti, under 5 s.
check "the daemon detached at least 4 times" bash -c "[[ \$(grep -c ': detach .* in [0-9]* ms' '$W/serve.log') -ge 4 ]]"
check "every detach of the daemon took under 5 s" bash -c "! grep -Eo ': detach .* in [0-9]+ ms' '$W/serve.log' | awk '{if (\$(NF-1) >= 5000) bad=1} END {exit !bad}'"
check "every provider detach Ganeti ran took under 5 s" bash -c "find /var/log/ganeti/extstorage -type f -newer '$W/t0' -exec grep -hEo 'detach [^ ]*: ok in [0-9]+ ms' {} + | awk '{n++; if (\$(NF-1) >= 5000) bad=1} END {exit (bad || n < 4)}'"
log "detach times (daemon): $(grep -Eo 'detach [^ ]* in [0-9]+ ms' "$W/serve.log" | awk '{print $(NF-1)}' | tr '\n' ' ')"
check "the daemon is still serving" kill -0 "$SERVE_PID"
stop_serve
check "SIGTERM stopped the daemon" bash -c "! kill -0 $SERVE_PID 2>/dev/null"

if [[ ${GNT_KEEP:-no} != yes ]]; then
  run "cluster-down.sh" "$HERE/cluster-down.sh"
  check "no loop device over the store is left" bash -c "! losetup -a | grep -q '$RUN'"
fi
echo "$passed passed, $failed failed"
if [[ $failed == 0 ]]; then rm -rf "$W"; exit 0; fi
log "logs kept in $W"; exit 1
