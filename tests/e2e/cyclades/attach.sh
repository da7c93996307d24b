#!/bin/bash
# Detachable volumes end to end (issue 18): cyclades-api against the real
# single-node Ganeti 3.1 lab with the archipelago provider, driven by the real
# clients: cinder create without a server (available, through the helper
# server), nova volume-attach / volume-detach, openstack server add volume /
# server remove volume, cinder list showing available; a pattern written
# through server 1's device reads back through server 2's after detach and
# attach; quota unchanged by attach and detach, given back by delete (nothing
# left in Ganeti or the store); refusals in one line with the database and
# Ganeti unchanged: detach or delete on a running server without hotplug (the
# fake hypervisor), detach of a root volume, attach of a volume in use, of
# another user's volume (404), of another type; nova boot with an available
# volume (block_device_mapping_v2 source_type volume). Root. GNT_ARCHIP_BIN=DIR with
# archip, archip-extstorage, snf-manage and cyclades-api (default: the repo's
# .build/debug). Ends with "N passed, N failed".
set -uo pipefail
. "$(dirname "$0")/../ganeti/lib.sh"
case ${1:-} in -h|--help) gnt_usage "$0"; exit 0;; esac
gnt_clean_env "$0" "$@"
need_root
cd /

GL=$GNT_LAB_DIR
. "$GNT_LAB_DIR/checks.sh"
. "$GNT_LAB_DIR/../cyclades/setup.sh"
need_bins archip archip-extstorage snf-manage cyclades-api
for c in cinder nova curl; do command -v $c >/dev/null || die "no $c (make deps: python3-cinderclient python3-novaclient)"; done
W=$(mktemp -d /var/tmp/gnt-cyclades-attach.XXXXXX)
STORE=$W/store RUN=/tmp/cyc-att-rt-$$ CONF=$W/archip.conf PDIR=$W/extstorage/archipelago DB=$W/cyclades.db
PORT=18777 U=http://127.0.0.1:18777
nova_bob() { nova_as "$BOB" "$@"; }
jq_() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
state() { sqlite3 "$DB" .dump 2>/dev/null | grep -v '^INSERT INTO grdb_migrations' | md5sum; }
gnt_disks() { ip netns exec "$GNT_NETNS" gnt-instance list --no-headers --units m --separator=' ' -o disk.count,disk.sizes "$1" 2>/dev/null; }
gnt_names() { ip netns exec "$GNT_NETNS" gnt-instance list --no-headers --separator=' ' -o disk.names "$1" 2>/dev/null; }
gnt_all() { ip netns exec "$GNT_NETNS" gnt-instance list --no-headers --separator=' ' -o name,status,disk.names 2>/dev/null | sort | md5sum; }
vstatus() { cinder_ show "$1" 2>/dev/null | awk -F'|' '$2 ~ /^ status / {gsub(/ /,"",$3); print $3}'; }
wait_status() { for _ in $(seq 1 180); do [[ $(vstatus "$1") == "$2" ]] && return 0; sleep 0.5; done; return 1; }
store_name() { "$BIN/archip" --store "$STORE" list --json | python3 -c "import json,sys; print(next((v['name'] for v in json.load(sys.stdin) if v['kind']=='volume' and v['metadata'].get('ganeti.cname')=='$1'), ''))"; }
dev_of() { "$BIN/archip" --store "$STORE" attached --runtime-dir "$RUN" --json | python3 -c "import json,sys; print(next((a['device'] for a in json.load(sys.stdin) if a['name']=='$1'), ''))"; }
usage_of() { snf quota-list --output json | jq_ "next('%d %d' % (r['usage'], r['pending']) for r in d if r['limit'] == $1)"; }
usage_settles_to() { for _ in $(seq 1 120); do [[ $(usage_of 6442450944) == "$1 $2" ]] && return 0; sleep 0.5; done; return 1; }
shutdown_() { ip netns exec "$GNT_NETNS" gnt-instance shutdown --timeout=0 "$1" >/dev/null 2>&1; }
startup_() { ip netns exec "$GNT_NETNS" gnt-instance startup "$1" >/dev/null 2>&1; }
# A refused request: the client exits 1 with one line naming the HTTP status and
# the reason, and neither the database nor Ganeti changed.
refused() {  # NAME HTTP-STATUS WORDS -- COMMAND...
  local name=$1 code=$2 words=$3; shift 4
  local before gbefore out rc
  before=$(state); gbefore=$(gnt_all)
  out=$("$@" 2>&1); rc=$?
  sleep 1   # a job wrongly sent would show in Ganeti by now
  if [[ $rc != 0 ]] && grep -Eq "(HTTP $code|\b$code\b)" <<<"$out" && grep -qi -- "$words" <<<"$out" && [[ $(state) == "$before" && $(gnt_all) == "$gbefore" ]]; then
    ok "refused: $name ($(grep -m1 -E "\b$code\b" <<<"$out" | head -c 220))"
  else
    bad "refused: $name (exit $rc: $(tr '\n' ' ' <<<"$out" | head -c 300); database $( [[ $(state) == "$before" ]] && echo same || echo CHANGED ), Ganeti $( [[ $(gnt_all) == "$gbefore" ]] && echo same || echo CHANGED ))"
  fi
}

log "detachable volumes through cyclades-api; work folder $W"
cyclades_lab_up || { echo "$passed passed, $failed failed"; exit 1; }
GV=$(ip netns exec "$GNT_NETNS" gnt-cluster version | awk '/^Software version/ {print $3}')
check "the lab runs Ganeti 3.1 or later ($GV)" bash -c "[[ '$GV' == 3.1* || '$GV' > 3.1 ]]"

run "set-up through snf-manage (backend, two types, flavors, image, users)" bash -c "
  set -e
  $(declare -f NS snf); GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH BIN=$BIN DB=$DB
  snf backend-add lab --rapi https://127.0.0.1:$GNT_RAPI_PORT --user $GNT_RAPI_USER --password $GNT_RAPI_PASS --insecure --node $GNT_NODE_NAME --os $GNT_OS_NAME --hypervisor fake
  snf volume-type-create archipelago --disk-template ext_archipelago
  snf volume-type-create fast --disk-template ext_archipelago
  snf flavor-create small --cpu 1 --ram 128 --disk 1 --volume-type archipelago"
IMG=$(snf image-register debian-12 --location snapshot:debian-img-v1 --size 24M)
TOKEN=$(snf user-create alice --quota 6G | awk '/^token:/ {print $2}')
BOB=$(snf user-create bob --quota 1G | awk '/^token:/ {print $2}')

ip netns exec "$GNT_NETNS" env -i PATH=$GNT_CLEAN_PATH HOME=/root LANG=C.UTF-8 "$BIN/cyclades-api" --db "$DB" --listen "127.0.0.1:$PORT" --store "$STORE" --runtime-dir "$RUN" --settle-interval 0.5 > "$W/api.log" 2>&1 &
APIPID=$!
for _ in $(seq 1 50); do [[ $(api "$U/volume/") == 200 ]] && break; sleep 0.2; done

run "nova boot vm1 (image root + a blank volume) --poll" \
  nova_ boot --flavor 1 --block-device "source=image,id=$IMG,dest=volume,size=1,bootindex=0,shutdown=remove" --block-device source=blank,dest=volume,size=1 vm1 --poll
run "nova boot vm2 (image root) --poll" nova_ boot --flavor 1 --image debian-12 vm2 --poll
run "bob: nova boot vmb --poll" nova_bob boot --flavor 1 --image debian-12 vmb --poll
S1=$(nova_ list 2>/dev/null | awk -F'|' '$3 ~ / vm1 / {gsub(/ /,"",$2); print $2}')
S2=$(nova_ list 2>/dev/null | awk -F'|' '$3 ~ / vm2 / {gsub(/ /,"",$2); print $2}')
SB=$(nova_bob list 2>/dev/null | awk -F'|' '$3 ~ / vmb / {gsub(/ /,"",$2); print $2}')
check "servers vm1 ($S1), vm2 ($S2), bob's vmb ($SB)" test -n "$S1" -a -n "$S2" -a -n "$SB"
ROOT1=1 BLANK1=2   # vm1's volumes

# --- a volume without a server ------------------------------------------------------------
run "cinder create --name loose 1 (no server)" cinder_ create --name loose 1
V=$(cinder_ list 2>/dev/null | awk -F'|' '$4 ~ / loose / {gsub(/ /,"",$2); print $2}')
check "volume loose ($V) becomes available" wait_status "$V" available
cinder_ list > "$W/list.txt" 2>&1
check "cinder list: loose is available" grep -Eq "^\| $V +\| available +\| loose +\| 1 " "$W/list.txt"
check "no instance holds snf-vol-$V in Ganeti; the helper server is stopped, with its own disk only" bash -c "! ip netns exec $GNT_NETNS gnt-instance list --no-headers -o disk.names | grep -q \"'snf-vol-$V'\" && [[ \$(ip netns exec $GNT_NETNS gnt-instance list --no-headers --separator=' ' -o status,disk.names snf-helper) == \"ADMIN_down ['snf-helper-root']\" ]]"
check "the store holds snf-vol-$V" test -n "$(store_name snf-vol-$V)"
check "quota: alice uses 4 GiB (the volume without a server counts)" usage_settles_to 4294967296 0

# --- attach (nova), write through vm1's device -------------------------------------------------
run "nova volume-attach vm1 $V" nova_ volume-attach "$S1" "$V"
check "volume $V becomes in-use" wait_status "$V" in-use
check "Ganeti: snf-$S1 holds snf-vol-$V as its third disk" test "$(gnt_names snf-$S1)" == "['snf-vol-1', 'snf-vol-2', 'snf-vol-$V']"
nova_ volume-attachments "$S1" > "$W/att.txt" 2>&1
check "nova volume-attachments vm1: $V on /dev/vdc" grep -Eq "\| $V +\| /dev/vdc +\| $S1 +\| $V " "$W/att.txt"
check "quota unchanged by attach" usage_settles_to 4294967296 0
python3 -c "import sys; sys.stdout.buffer.write(bytes((i * 7 + 3) % 256 for i in range(1 << 20)))" > "$W/pattern"
DEV1=$(dev_of "$(store_name snf-vol-$V)")
check "snf-vol-$V has a device on the node ($DEV1)" test -b "$DEV1"
run "write 1 MiB through vm1's device for snf-vol-$V (O_DIRECT + fsync)" dd if="$W/pattern" of="$DEV1" bs=1M seek=3 oflag=direct conv=notrunc,fsync status=none

# --- refusals ------------------------------------------------------------------------------------
refused "nova volume-detach of a volume of running vm1 (fake hypervisor: no hotplug)" 409 "stop the server" -- nova_ volume-detach "$S1" "$V"
refused "cinder delete of a volume of running vm1 (no hotplug)" 409 "hotplug" -- cinder_ delete "$BLANK1"
check "volume $BLANK1 is still in-use (no silent revert, no job)" bash -c "$(declare -f NS cinder_ vstatus); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; [[ \$(vstatus $BLANK1) == in-use ]]"
refused "nova volume-detach of vm1's root volume" 400 "root volume" -- nova_ volume-detach "$S1" "$ROOT1"
refused "nova volume-attach of a volume in use (vm1's) to vm2" 400 "in use" -- nova_ volume-attach "$S2" "$BLANK1"
refused "bob: nova volume-attach of alice's volume to his server" 404 "does not exist" -- nova_bob volume-attach "$SB" "$V"
run "cinder create --volume-type fast --name other 1 (no server)" cinder_ create --volume-type fast --name other 1
VO=$(cinder_ list 2>/dev/null | awk -F'|' '$4 ~ / other / {gsub(/ /,"",$2); print $2}')
check "volume other ($VO, type fast) becomes available" wait_status "$VO" available
refused "nova volume-attach of a volume of another type (fast) to vm2 (archipelago)" 400 "type" -- nova_ volume-attach "$S2" "$VO"

# --- detach (nova) from stopped vm1, attach (openstack) to vm2, read back ----------------------
run "gnt-instance shutdown snf-$S1 (behind Cyclades' back: no stop in the API)" shutdown_ "snf-$S1"
run "nova volume-detach vm1 $V" nova_ volume-detach "$S1" "$V"
check "volume $V becomes available again" wait_status "$V" available
check "Ganeti: snf-$S1 is back to its two disks" test "$(gnt_names snf-$S1)" == "['snf-vol-1', 'snf-vol-2']"
check "quota unchanged by detach (alice: 5 GiB with volume other)" usage_settles_to 5368709120 0
if command -v openstack >/dev/null; then
  run "openstack server add volume vm2 $V" ostack server add volume vm2 "$V"
else
  run "nova volume-attach vm2 $V (no openstack client)" nova_ volume-attach "$S2" "$V"
fi
check "volume $V becomes in-use on vm2" wait_status "$V" in-use
check "Ganeti: snf-$S2 holds snf-vol-$V as its second disk" test "$(gnt_names snf-$S2)" == "['snf-vol-3', 'snf-vol-$V']"
DEV2=$(dev_of "$(store_name snf-vol-$V)")
check "vm2's device for snf-vol-$V ($DEV2) reads back what vm1 wrote" bash -c "[[ -b '$DEV2' ]] && dd if='$DEV2' bs=1M skip=3 count=1 iflag=direct status=none | cmp - '$W/pattern'"
check "quota unchanged by the second attach" usage_settles_to 5368709120 0
if command -v openstack >/dev/null; then
  refused "openstack server remove volume from running vm2 (no hotplug)" 409 "stop the server" -- ostack server remove volume vm2 "$V"
  run "gnt-instance shutdown snf-$S2" shutdown_ "snf-$S2"
  run "openstack server remove volume vm2 $V" ostack server remove volume vm2 "$V"
  check "volume $V becomes available" wait_status "$V" available
  ostack volume list > "$W/olist.txt" 2>&1
  check "openstack volume list: loose available" grep -Eq "\| loose +\| available +\| +1 \|" "$W/olist.txt"
else
  run "gnt-instance shutdown snf-$S2" shutdown_ "snf-$S2"
  run "nova volume-detach vm2 $V" nova_ volume-detach "$S2" "$V"
  check "volume $V becomes available" wait_status "$V" available
fi

# --- delete of available volumes: out of Ganeti and the store, quota back -----------------
SN=$(store_name snf-vol-$V)
run "cinder delete $V $VO (available)" cinder_ delete "$V" "$VO"
for _ in $(seq 1 240); do [[ $(vstatus "$V") == deleted || -z $(vstatus "$V") ]] && [[ $(vstatus "$VO") == deleted || -z $(vstatus "$VO") ]] && break; sleep 0.5; done
check "volumes $V and $VO are deleted" bash -c "$(declare -f NS cinder_ vstatus); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; for v in $V $VO; do s=\$(vstatus \$v); [[ \$s == deleted || -z \$s ]] || exit 1; done"
check "no instance holds them; the helper server has its own disk only" bash -c "! ip netns exec $GNT_NETNS gnt-instance list --no-headers -o disk.names | grep -Eq \"'snf-vol-($V|$VO)'\" && [[ \$(ip netns exec $GNT_NETNS gnt-instance list --no-headers -o disk.names snf-helper) == \"['snf-helper-root']\" ]]"
check "Ganeti's configuration no longer knows snf-vol-$V (attach by name fails)" bash -c "! ip netns exec $GNT_NETNS gnt-instance modify --disk attach:name=snf-vol-$V snf-$S2 >/dev/null 2>&1"
check "the store no longer holds $SN" bash -c "[[ -z \$('$BIN/archip' --store '$STORE' list --json | python3 -c \"import json,sys; print(next((v['name'] for v in json.load(sys.stdin) if v['name']=='$SN'), ''))\") ]]"
check "quota given back: alice uses 3 GiB (three server volumes)" usage_settles_to 3221225472 0

# --- nova boot with an available volume (block_device_mapping_v2 source_type volume) -------
run "cinder create --name bootvol 1 (no server)" cinder_ create --name bootvol 1
VB=$(cinder_ list 2>/dev/null | awk -F'|' '$4 ~ / bootvol / {gsub(/ /,"",$2); print $2}')
check "volume bootvol ($VB) becomes available" wait_status "$VB" available
run "nova boot --image debian-12 --block-device source=volume,id=$VB,dest=volume vm4 --poll" \
  nova_ boot --flavor 1 --image debian-12 --block-device "source=volume,id=$VB,dest=volume" vm4 --poll
S4=$(nova_ list 2>/dev/null | awk -F'|' '$3 ~ / vm4 / {gsub(/ /,"",$2); print $2}')
check "volume $VB becomes in-use on vm4 ($S4) once it is built" wait_status "$VB" in-use
check "Ganeti: snf-$S4 holds its new root and snf-vol-$VB" bash -c "[[ \$(ip netns exec $GNT_NETNS gnt-instance list --no-headers -o disk.names snf-$S4) == \"['snf-vol-$((VB + 1))', 'snf-vol-$VB']\" ]]"
check "quota: alice uses 5 GiB (the attach charged nothing more)" usage_settles_to 5368709120 0
run "reconcile-servers is clean" snf reconcile-servers --store "$STORE"

kill -TERM $APIPID; wait $APIPID; rc=$?
check "SIGTERM: cyclades-api exits 0" test $rc == 0
if [[ ${GNT_KEEP:-no} != yes ]]; then run "cluster-down.sh" "$GL/cluster-down.sh"; fi
rm -rf "$RUN"
echo "$passed passed, $failed failed"
if [[ $failed == 0 ]]; then rm -rf "$W"; exit 0; fi
log "logs kept in $W"; exit 1
