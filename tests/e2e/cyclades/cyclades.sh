#!/bin/bash
# End-to-end test of the Cyclades registration layer (snf-manage) against a
# real single-node Ganeti 3.1 (or 3.0) cluster with the archipelago provider (see
# tests/e2e/ganeti/README.md): server-create (root volume from an image, a
# blank second volume), volume-create from a snapshot, server-inspect,
# volume-remove (quota given back), things broken on purpose (a disk removed
# behind Cyclades' back, snf-manage killed between charge and job, a job
# left unsettled) reported and fixed by reconcile-servers, bad input refused
# with the database, quotas and Ganeti unchanged, on 3.1 a volume without a
# server (volume-create, volume-attach, volume-detach, drift behind
# Cyclades' back fixed by reconcile-servers, volume-remove), server-remove.
# Root. GNT_ARCHIP_BIN=DIR with archip, archip-extstorage and snf-manage
# (default: the repo's .build/debug). Ends with "N passed, N failed".
set -uo pipefail
. "$(dirname "$0")/../ganeti/lib.sh"
case ${1:-} in -h|--help) gnt_usage "$0"; exit 0;; esac
gnt_clean_env "$0" "$@"
need_root
cd /

GL=$GNT_LAB_DIR
. "$GNT_LAB_DIR/checks.sh"
. "$GNT_LAB_DIR/../cyclades/setup.sh"
need_bins archip archip-extstorage snf-manage
W=$(mktemp -d /var/tmp/gnt-cyclades.XXXXXX)
STORE=$W/store RUN=/tmp/cyc-rt-$$ CONF=$W/archip.conf PDIR=$W/extstorage/archipelago DB=$W/cyclades.db
# snf-manage talks to RAPI on 127.0.0.1:5080, which exists only in the namespace.
snfj() { snf "$@" --output json; }
archip() { "$BIN/archip" --store "$STORE" "$@"; }
jq_() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
state() { sqlite3 "$DB" .dump 2>/dev/null | grep -v '^INSERT INTO grdb_migrations' | md5sum; }
gnt_disks() { ip netns exec "$GNT_NETNS" gnt-instance list --no-headers -o disk.count,disk.sizes "$1" 2>/dev/null; }
store_cnames() { archip list --json | python3 -c "import json,sys; print(' '.join(sorted(v['metadata'].get('ganeti.cname','') for v in json.load(sys.stdin) if v['kind']=='volume' and v['metadata'].get('ganeti.cname','').startswith('snf-vol-'))))"; }
clean() { snf reconcile-servers --store "$STORE"; }
# usage_is BYTES PENDING: alice's project (the one with the 6 GiB limit).
usage_is() { [[ $(snfj quota-list | jq_ "next('%d %d' % (r['usage'], r['pending']) for r in d if r['limit'] == 6442450944)") == "$1 $2" ]]; }

log "Cyclades layer against a Ganeti cluster; work folder $W"
cyclades_lab_up || { echo "$passed passed, $failed failed"; exit 1; }

# --- set-up -------------------------------------------------------------------------
run "backend-add (RAPI of the lab cluster)" snf backend-add lab --rapi "https://127.0.0.1:$GNT_RAPI_PORT" --user "$GNT_RAPI_USER" \
  --password "$GNT_RAPI_PASS" --insecure --node "$GNT_NODE_NAME" --os "$GNT_OS_NAME" --hypervisor fake
run "volume-type-create archipelago (ext_archipelago)" snf volume-type-create archipelago --disk-template ext_archipelago
run "volume-type-create drbd" snf volume-type-create drbd --disk-template drbd
run "flavor-create small (1 GB root)" snf flavor-create small --cpu 1 --ram 128 --disk 1 --volume-type archipelago
# Registered with its checksum: every disk made from it carries origin_sha256.
IMG_SHA=$(sha256sum "$W/image.raw" | cut -d' ' -f1)
IMG=$(snf image-register debian-12 --location snapshot:debian-img-v1 --size 24M --checksum "$IMG_SHA")
check "image-register prints the image id" grep -Eq '^[0-9a-f-]{36}$' <<<"$IMG"
TOKEN=$(snf user-create alice --quota 6G | awk '/^token:/ {print $2}')
check "user-create prints a token" test -n "$TOKEN"
snf user-create bob --quota 1G >/dev/null

# --- a server with a root volume from the image and a blank volume ---------------
run "server-create vm1 --image debian-12 --volume size=1 --volume size=2 --wait" \
  snf server-create vm1 --flavor small --user alice --image "$IMG" --volume size=1 --volume size=2 --no-start --wait
SID=$(snfj server-list | jq_ "d[0]['id']")
check "server $SID is ACTIVE" bash -c "[[ \$(ip netns exec $GNT_NETNS env -i PATH=$GNT_CLEAN_PATH '$BIN/snf-manage' server-list --db '$DB' --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0][\"status\"])') == ACTIVE ]]"
check "Ganeti has snf-$SID with disks of 1 and 2 GiB" bash -c "[[ \"\$(ip netns exec $GNT_NETNS gnt-instance list --no-headers --units m --separator=' ' -o disk.count,disk.sizes snf-$SID)\" == '2 1024,2048' ]]"
check "the store has snf-vol-1 and snf-vol-2" bash -c "[[ \"\$('$BIN/archip' --store '$STORE' list --json | python3 -c \"import json,sys; print(' '.join(sorted(v['metadata'].get('ganeti.cname','') for v in json.load(sys.stdin) if v['metadata'].get('ganeti.cname','').startswith('snf-vol-'))))\")\" == 'snf-vol-1 snf-vol-2' ]]"
ROOTSTORE=$(archip list --json | python3 -c "import json,sys; print(next(v['name'] for v in json.load(sys.stdin) if v['metadata'].get('ganeti.cname')=='snf-vol-1'))")
check "the root volume is an O(1) clone of the image's snapshot" bash -c "[[ \$('$BIN/archip' --store '$STORE' info '$ROOTSTORE' --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"parent\"])') == debian-img-v1 ]]"
check "the provider checked the image's checksum (recorded with debian-img-v1)" bash -c "[[ \$('$BIN/archip' --store '$STORE' info debian-img-v1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"metadata\"].get(\"content.sha256\",\"\"))') == \"\$(stat -c %s '$W/image.raw') $IMG_SHA\" ]]"
check "quota: alice uses 3 GiB" usage_is 3221225472 0
run "reconcile-servers is clean" clean

# --- a volume from a snapshot ---------------------------------------------------------
SNAP=$(snf snapshot-create 1 --name s1 --store "$STORE" --runtime-dir "$RUN")
check "snapshot-create of volume 1 prints an id" grep -Eq '^[0-9a-f-]{36}$' <<<"$SNAP"
run "volume-create --server $SID --size 1 --source snapshot:… --wait" snf volume-create --server "$SID" --size 1 --source "snapshot:$SNAP" --user alice --wait
check "Ganeti has three disks" bash -c "[[ \"\$(ip netns exec $GNT_NETNS gnt-instance list --no-headers -o disk.count snf-$SID | tr -d ' ')\" == 3 ]]"
snf server-inspect "$SID" > "$W/inspect.txt"
check "server-inspect shows 3 IN_USE volumes and 3 Ganeti disks" bash -c "[[ \$(grep -c IN_USE '$W/inspect.txt') == 3 && \$(grep -c 'snf-vol-' '$W/inspect.txt') -ge 3 ]]"
check "the store holds snf-vol-1/2/3 at 1, 2 and 1 GiB" bash -c "[[ \"\$('$BIN/archip' --store '$STORE' list --json | python3 -c \"import json,sys; print(' '.join('%s=%d' % (v['metadata']['ganeti.cname'], v['size'] >> 30) for v in sorted(json.load(sys.stdin), key=lambda v: v['metadata'].get('ganeti.cname','')) if v['metadata'].get('ganeti.cname','').startswith('snf-vol-')))\")\" == 'snf-vol-1=1 snf-vol-2=2 snf-vol-3=1' ]]"
run "reconcile-servers is clean" clean

# --- bad input: refused, nothing changes ------------------------------------------------
before=$(state); gbefore=$(gnt_disks snf-$SID)
refused() {  # NAME ARGS...: exit 1, one line, state unchanged
  local name=$1; shift
  local out; out=$(snf "$@" 2>&1 >/dev/null); local rc=$?
  if [[ $rc == 1 && $(wc -l <<<"$out") == 1 && $out == snf-manage:* && $(state) == "$before" ]]; then ok "refused: $name ($out)"
  else bad "refused: $name (exit $rc: $out)"; fi
}
refused "unknown server" volume-create --server 999 --size 1 --user alice
refused "unknown user" volume-create --server "$SID" --size 1 --user mallory
refused "another user's server" volume-create --server "$SID" --size 1 --user bob
refused "wrong volume type" volume-create --server "$SID" --size 1 --user alice --volume-type drbd
refused "size 0" volume-create --server "$SID" --size 0 --user alice
refused "size -1" volume-create --server "$SID" --size=-1 --user alice
refused "huge size" volume-create --server "$SID" --size 100000 --user alice
refused "a source of the wrong kind" volume-create --server "$SID" --size 1 --user alice --source disk:1
refused "a volume to clone that does not exist" volume-create --server "$SID" --size 2 --user alice --source volume:99
refused "a clone smaller than its source" volume-create --server "$SID" --size 1 --user alice --source volume:2
refused "a missing image" volume-create --server "$SID" --size 1 --user alice --source image:nope
refused "over quota" volume-create --server "$SID" --size 4 --user alice
refused "removing the root volume" volume-remove 1
refused "a ninth disk" server-create vm9 --flavor small --user alice --image "$IMG" --volume size=1 --volume size=1 --volume size=1 --volume size=1 --volume size=1 --volume size=1 --volume size=1 --volume size=1 --volume size=1
refused "a blank root" server-create vm9 --flavor small --user alice --volume size=1
check "Ganeti unchanged by refused requests" test "$(gnt_disks snf-$SID)" == "$gbefore"

# --- remove a volume: everywhere, quota back --------------------------------------------
run "volume-remove 3 --wait" snf volume-remove 3 --wait
check "Ganeti has two disks again" bash -c "[[ \"\$(ip netns exec $GNT_NETNS gnt-instance list --no-headers -o disk.count snf-$SID | tr -d ' ')\" == 2 ]]"
check "snf-vol-3 is gone from the store" bash -c "! '$BIN/archip' --store '$STORE' list --json | grep -q '\"snf-vol-3\"'"
check "quota back to 3 GiB" usage_is 3221225472 0
run "reconcile-servers is clean" clean

# --- broken on purpose --------------------------------------------------------------------
run "gnt-instance modify --disk snf-vol-2:remove behind Cyclades' back" ip netns exec "$GNT_NETNS" gnt-instance modify --disk snf-vol-2:remove "snf-$SID"
check "reconcile reports the missing disk (exit 1)" bash -c "ip netns exec $GNT_NETNS env -i PATH=$GNT_CLEAN_PATH '$BIN/snf-manage' reconcile-servers --db '$DB' | grep -q 'disk-missing-in-ganeti.*snf-vol-2'; [[ \${PIPESTATUS[0]} == 1 ]]"
run "reconcile-servers --fix-all fixes it" snf reconcile-servers --fix-all --store "$STORE"
check "quota back to 1 GiB" usage_is 1073741824 0
run "reconcile-servers is clean" clean

ip netns exec "$GNT_NETNS" env -i PATH=$GNT_CLEAN_PATH HOME=/root SNF_FAULT=before-submit "$BIN/snf-manage" volume-create --server "$SID" --size 1 --user alice --db "$DB" >/dev/null 2>&1
check "snf-manage killed between charge and job: reconcile reports a stuck commission" bash -c "ip netns exec $GNT_NETNS env -i PATH=$GNT_CLEAN_PATH '$BIN/snf-manage' reconcile-servers --db '$DB' | grep -q stuck-commission"
run "reconcile-servers --fix-all rejects the charge" snf reconcile-servers --fix-all
check "quota still 1 GiB, nothing pending" usage_is 1073741824 0
# A real kill -9 of snf-manage after Ganeti got the job and before it ended.
ip netns exec "$GNT_NETNS" env -i PATH=$GNT_CLEAN_PATH HOME=/root "$BIN/snf-manage" volume-create --server "$SID" --size 1 --user alice --db "$DB" --wait >/dev/null 2>&1 &
KP=$!
for _ in $(seq 1 100); do [[ -n $(sqlite3 "$DB" "SELECT backendJobID FROM volumes WHERE status = 'CREATING' AND backendJobID IS NOT NULL" 2>/dev/null) ]] && break; sleep 0.05; done
kill -9 $KP 2>/dev/null; wait $KP 2>/dev/null
check "snf-manage was killed with its job sent and not settled" bash -c "[[ -n \$(sqlite3 '$DB' \"SELECT id FROM volumes WHERE status = 'CREATING' AND backendJobID IS NOT NULL\") ]]"
sleep 3
check "reconcile reports the ended job of the killed snf-manage" bash -c "ip netns exec $GNT_NETNS env -i PATH=$GNT_CLEAN_PATH '$BIN/snf-manage' reconcile-servers --db '$DB' | grep -q job-ended"
run "reconcile-servers --fix-all settles it" snf reconcile-servers --fix-all --store "$STORE"
run "reconcile-servers is clean" clean
check "the volume of the killed run is IN_USE and charged" usage_is 2147483648 0
run "volume-create without --wait (left unsettled)" snf volume-create --server "$SID" --size 1 --user alice
sleep 3
check "reconcile reports the ended job" bash -c "ip netns exec $GNT_NETNS env -i PATH=$GNT_CLEAN_PATH '$BIN/snf-manage' reconcile-servers --db '$DB' | grep -q job-ended"
run "reconcile-servers --fix-all settles it" snf reconcile-servers --fix-all --store "$STORE"
run "reconcile-servers is clean" clean

# --- detachable volumes (Ganeti 3.1): snf-manage volume-attach / volume-detach -------------------
GV=$(ip netns exec "$GNT_NETNS" gnt-cluster version | awk '/^Software version/ {print $3}')
before=$(state)
if [[ $GV == 3.0* ]]; then
  refused "volume-create without a server on Ganeti $GV (attach needs 3.1)" volume-create --size 1 --user alice
else
  run "volume-create --size 1 --name loose (no server) --wait" snf volume-create --size 1 --user alice --name loose --wait
  VL=$(snfj volume-list --status AVAILABLE | jq_ "d[0]['id']")
  check "volume $VL is AVAILABLE, no instance holds snf-vol-$VL, the store has it" bash -c "[[ -n '$VL' ]] && ! ip netns exec $GNT_NETNS gnt-instance list --no-headers -o disk.names | grep -q \"'snf-vol-$VL'\" && [[ \$('$BIN/archip' --store '$STORE' list --json) == *'\"snf-vol-$VL\"'* ]]"
  check "quota: 4 GiB with the volume without a server" usage_is 4294967296 0
  gbefore=$(gnt_disks snf-$SID); before=$(state)
  refused "volume-detach of the root volume" volume-detach 1
  refused "volume-attach of a volume in use" volume-attach 1 --server "$SID"
  refused "volume-attach to a missing server" volume-attach "$VL" --server 999
  check "Ganeti unchanged by refused requests" test "$(gnt_disks snf-$SID)" == "$gbefore"
  run "volume-attach $VL --server $SID --wait" snf volume-attach "$VL" --server "$SID" --wait
  check "Ganeti: snf-$SID holds snf-vol-$VL" bash -c "[[ \$(ip netns exec $GNT_NETNS gnt-instance list --no-headers -o disk.names snf-$SID) == *snf-vol-$VL* ]]"
  run "volume-detach $VL --wait" snf volume-detach "$VL" --wait
  check "volume $VL is AVAILABLE again" test "$(sqlite3 "$DB" "SELECT status FROM volumes WHERE id = $VL")" == AVAILABLE
  check "quota unchanged by attach and detach: 4 GiB" usage_is 4294967296 0
  run "reconcile-servers is clean" clean
  run "gnt-instance modify --disk attach:name=snf-vol-$VL behind Cyclades' back" ip netns exec "$GNT_NETNS" gnt-instance modify --disk "attach:name=snf-vol-$VL" "snf-$SID"
  check "reconcile reports it attached in Ganeti (exit 1)" bash -c "ip netns exec $GNT_NETNS env -i PATH=$GNT_CLEAN_PATH '$BIN/snf-manage' reconcile-servers --db '$DB' | grep -q 'attached-in-ganeti.*volume $VL'; [[ \${PIPESTATUS[0]} == 1 ]]"
  run "reconcile-servers --fix-all records it IN_USE" snf reconcile-servers --fix-all --store "$STORE"
  run "reconcile-servers is clean" clean
  run "gnt-instance modify --disk snf-vol-$VL:detach behind Cyclades' back" ip netns exec "$GNT_NETNS" gnt-instance modify --disk "snf-vol-$VL:detach" "snf-$SID"
  check "reconcile (with the store) reports it detached in Ganeti (exit 1)" bash -c "ip netns exec $GNT_NETNS env -i PATH=$GNT_CLEAN_PATH '$BIN/snf-manage' reconcile-servers --db '$DB' --store '$STORE' | grep -q 'detached-in-ganeti.*volume $VL'; [[ \${PIPESTATUS[0]} == 1 ]]"
  run "reconcile-servers --fix-all records it AVAILABLE" snf reconcile-servers --fix-all --store "$STORE"
  check "quota unchanged: 4 GiB" usage_is 4294967296 0
  run "reconcile-servers is clean" clean
  run "volume-remove $VL --wait (through the helper server)" snf volume-remove "$VL" --wait
  check "snf-vol-$VL is gone: no instance holds it, not in the store; the helper is back to its own disk" bash -c "! ip netns exec $GNT_NETNS gnt-instance list --no-headers -o disk.names | grep -q \"'snf-vol-$VL'\" && [[ \$('$BIN/archip' --store '$STORE' list --json) != *'\"snf-vol-$VL\"'* && \$(ip netns exec $GNT_NETNS gnt-instance list --no-headers -o disk.count snf-helper | tr -d ' ') == 1 ]]"
  check "quota given back: 3 GiB" usage_is 3221225472 0
  run "reconcile-servers is clean" clean
fi

# --- node-level verification seen by the control plane ----------------------------------------
run "archip verify --all (the scrub)" archip verify --all
check "volume-inspect 1 shows its last verification (clean)" bash -c "snf() { ip netns exec $GNT_NETNS env -i PATH=$GNT_CLEAN_PATH '$BIN/snf-manage' \"\$@\" --db '$DB'; }; snf volume-inspect 1 --store '$STORE' | grep 'store.last_verify' | grep -vq 'never verified'"
# A damaged owned block of a store volume: the scrub finds it, reconcile reports it.
run "a scratch volume with an owned block" bash -c "'$BIN/archip' --store '$STORE' create scratch --size 8M && head -c 4096 /dev/urandom | '$BIN/archip' --store '$STORE' write scratch --offset 0"
OWNED=$STORE/layers/$(archip info scratch --json | jq_ "d['layer']")/b00000000
[[ -f $OWNED ]] && printf '\xff' | dd of="$OWNED" bs=1 seek=100 conv=notrunc status=none
check "verify --all finds the damage (exit 1)" bash -c "'$BIN/archip' --store '$STORE' verify --all >/dev/null 2>&1; [[ \$? == 1 ]]"
check "reconcile-servers reports the damaged volume (exit 1)" bash -c "out=\$(ip netns exec $GNT_NETNS env -i PATH=$GNT_CLEAN_PATH '$BIN/snf-manage' reconcile-servers --db '$DB' --store '$STORE'); rc=\$?; grep -q 'damaged: store volume scratch' <<<\"\$out\" && [[ \$rc == 1 ]]"
run "remove the scratch volume" archip remove scratch
run "archip verify --all is clean again" archip verify --all
run "reconcile-servers is clean" clean

# --- remove the server ----------------------------------------------------------------------
run "server-remove $SID --wait" snf server-remove "$SID" --wait
check "Ganeti no longer has snf-$SID" bash -c "! ip netns exec $GNT_NETNS gnt-instance list --no-headers -o name | grep -qx snf-$SID"
check "no snf-vol volume is left in the store" bash -c "! '$BIN/archip' --store '$STORE' list --json | grep -q 'snf-vol-'"
check "quota: nothing used, nothing pending" usage_is 0 0
run "reconcile-servers is clean" clean

if [[ ${GNT_KEEP:-no} != yes ]]; then run "cluster-down.sh" "$GL/cluster-down.sh"; fi
rm -rf "$RUN"
echo "$passed passed, $failed failed"
if [[ $failed == 0 ]]; then rm -rf "$W"; exit 0; fi
log "logs kept in $W"; exit 1
