#!/bin/bash
# End-to-end test of cyclades-api (the Cinder-compatible volume API and the
# compute extensions) against a real single-node Ganeti cluster with the
# archipelago provider (see tests/e2e/ganeti/README.md), driven by Debian's
# real clients: nova (python3-novaclient) boot with --block-device and
# volume-attachments, cinder (python3-cinderclient) list, show, create --hint
# server_id=N, type-list, metadata, snapshot-create, create --snapshot-id,
# create --source-volid (a clone of a volume in use), extend, delete;
# openstack (python3-openstackclient) server create/list/delete, volume
# create/show/list (--source: a clone), server volume list; nova boot --image NAME; isolation between users, bad tokens, bad input (database
# unchanged), attach of a volume in use (400; attach.sh covers attach and detach), server delete, SIGTERM. Root. GNT_ARCHIP_BIN=DIR
# with archip, archip-extstorage, snf-manage and cyclades-api (default: the
# repo's .build/debug). Ends with "N passed, N failed".
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
W=$(mktemp -d /var/tmp/gnt-cyclades-api.XXXXXX)
STORE=$W/store RUN=/tmp/cyc-api-rt-$$ CONF=$W/archip.conf PDIR=$W/extstorage/archipelago DB=$W/cyclades.db
PORT=18776 U=http://127.0.0.1:18776
archip() { "$BIN/archip" --store "$STORE" "$@"; }
jq_() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
state() { sqlite3 "$DB" .dump 2>/dev/null | grep -v '^INSERT INTO grdb_migrations' | md5sum; }
gnt_disks() { ip netns exec "$GNT_NETNS" gnt-instance list --no-headers --units m --separator=' ' -o disk.count,disk.sizes "$1" 2>/dev/null; }
vstatus() { cinder_ show "$1" 2>/dev/null | awk -F'|' '$2 ~ /^ status / {gsub(/ /,"",$3); print $3}'; }
vfield() { cinder_ show "$1" 2>/dev/null | awk -F'|' -v k="$2" '$2 ~ "^ "k" " {gsub(/ /,"",$3); print $3}'; }
wait_status() {  # VOLUME STATUS: up to 90 s
  for _ in $(seq 1 180); do [[ $(vstatus "$1") == "$2" ]] && return 0; sleep 0.5; done; return 1
}
store_name() { "$BIN/archip" --store "$STORE" list --json | python3 -c "import json,sys; print(next((v['name'] for v in json.load(sys.stdin) if v['kind']=='volume' and v['metadata'].get('ganeti.cname')=='$1'), ''))"; }
dev_of() { "$BIN/archip" --store "$STORE" attached --runtime-dir "$RUN" --json | python3 -c "import json,sys; print(next((a['device'] for a in json.load(sys.stdin) if a['name']=='$1'), ''))"; }
usage_is() { [[ $(snf quota-list --output json | jq_ "next('%d %d' % (r['usage'], r['pending']) for r in d if r['limit'] == 6442450944)") == "$1 $2" ]]; }
# A server delete is settled when cyclades-api's poller (every second) sees Ganeti's job end,
# which on a loaded machine comes seconds after the instance leaves `gnt-instance list`.
usage_settles_to() { for _ in $(seq 1 120); do usage_is "$1" "$2" && return 0; sleep 0.5; done; return 1; }

log "cyclades-api against a Ganeti cluster; work folder $W"
cyclades_lab_up || { echo "$passed passed, $failed failed"; exit 1; }

run "set-up through snf-manage (backend, type, flavor, image, users)" bash -c "
  set -e
  $(declare -f NS snf); GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH BIN=$BIN DB=$DB
  snf backend-add lab --rapi https://127.0.0.1:$GNT_RAPI_PORT --user $GNT_RAPI_USER --password $GNT_RAPI_PASS --insecure --node $GNT_NODE_NAME --os $GNT_OS_NAME --hypervisor fake
  snf volume-type-create archipelago --disk-template ext_archipelago
  snf flavor-create small --cpu 1 --ram 128 --disk 1 --volume-type archipelago"
IMG=$(snf image-register debian-12 --location snapshot:debian-img-v1 --size 24M)
TOKEN=$(snf user-create alice --quota 6G | awk '/^token:/ {print $2}')
BOB=$(snf user-create bob --quota 1G | awk '/^token:/ {print $2}')
check "tokens for alice and bob" test -n "$TOKEN" -a -n "$BOB"

ip netns exec "$GNT_NETNS" env -i PATH=$GNT_CLEAN_PATH HOME=/root LANG=C.UTF-8 "$BIN/cyclades-api" --db "$DB" --listen "127.0.0.1:$PORT" --store "$STORE" --runtime-dir "$RUN" --settle-interval 0.5 > "$W/api.log" 2>&1 &
APIPID=$!
for _ in $(seq 1 50); do [[ $(api "$U/volume/") == 200 ]] && break; sleep 0.2; done
check "cyclades-api answers the version document without a token" bash -c "[[ \$(cat '$W/body' | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"versions\"][0][\"id\"])') == v3.0 ]]"

# --- nova boot with block devices ------------------------------------------------------
run "nova boot --block-device source=image,... --block-device source=blank,... --poll" \
  nova_ boot --flavor 1 --block-device "source=image,id=$IMG,dest=volume,size=1,bootindex=0,shutdown=remove" \
  --block-device source=blank,dest=volume,size=1 vm1 --poll
SID=$(nova_ list 2>/dev/null | awk -F'|' '$3 ~ / vm1 / {gsub(/ /,"",$2); print $2}')
check "nova list: vm1 ($SID) is ACTIVE" bash -c "$(declare -f NS nova_ nova_as); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; nova_ list 2>/dev/null | grep -q ' vm1 .*ACTIVE'"
check "Ganeti has snf-$SID with two 1 GiB disks" test "$(gnt_disks snf-$SID)" == "2 1024,1024"
nova_ volume-attachments "$SID" > "$W/att.txt" 2>&1
check "nova volume-attachments lists volumes 1 (/dev/vda) and 2 (/dev/vdb)" bash -c "grep -Eq '\| 1 +\| /dev/vda +\| $SID +\| 1 ' '$W/att.txt' && grep -Eq '\| 2 +\| /dev/vdb +\| $SID +\| 2 ' '$W/att.txt'"
nova_ volume-attach "$SID" 1 > "$W/attach.txt" 2>&1; rc=$?
check "nova volume-attach of a volume in use: exit 1, BadRequest (HTTP 400), one line why" bash -c "[[ $rc == 1 ]] && grep -q 'in use.*(HTTP 400)' '$W/attach.txt'"

# --- cinder ---------------------------------------------------------------------------
cinder_ list > "$W/list.txt" 2>&1
check "cinder list: volumes 1 and 2 in-use, attached to $SID" bash -c "[[ \$(grep -Ec '\| (1|2) +\| in-use .*\| $SID +\|' '$W/list.txt') == 2 ]]"
run "cinder create --hint server_id=$SID --name x 1" cinder_ create --hint "server_id=$SID" --name x 1
check "volume 3 becomes in-use" wait_status 3 in-use
check "cinder show 3: name x, size 1, attached to $SID" bash -c "$(declare -f NS cinder_ vfield); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; [[ \$(vfield 3 name) == x && \$(vfield 3 size) == 1 && \$(vfield 3 attached_servers) == \"['$SID']\" ]]"
check "Ganeti has three disks" test "$(gnt_disks snf-$SID)" == "3 1024,1024,1024"
check "cinder type-list shows archipelago" bash -c "$(declare -f NS cinder_); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; cinder_ type-list 2>/dev/null | grep -Eq '\| 1 +\| archipelago '"
run "cinder metadata 3 set purpose=db" cinder_ metadata 3 set purpose=db
check "cinder metadata-show 3: purpose=db" bash -c "$(declare -f NS cinder_); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; cinder_ metadata-show 3 2>/dev/null | grep -Eq '\| purpose +\| db '"
cinder_ snapshot-create 1 --name s1 > "$W/snap.txt" 2>&1
SNAP=$(awk -F'|' '$2 ~ /^ id / {gsub(/ /,"",$3); print $3}' "$W/snap.txt")
check "cinder snapshot-create 1 --name s1 prints a snapshot id ($SNAP)" grep -Eq '^[0-9a-f-]{36}$' <<<"$SNAP"
check "the store holds snf-snap-1-1" bash -c "'$BIN/archip' --store '$STORE' list --json | grep -q '\"snf-snap-1-1\"'"
check "cinder snapshot-list: s1 available" bash -c "$(declare -f NS cinder_); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; cinder_ snapshot-list 2>/dev/null | grep -Eq '$SNAP .*available'"
run "cinder create --snapshot-id $SNAP --hint server_id=$SID --name fromsnap" cinder_ create --snapshot-id "$SNAP" --hint "server_id=$SID" --name fromsnap
check "volume 4 becomes in-use" wait_status 4 in-use
V4=$(archip list --json | python3 -c "import json,sys; print(next((v['name'] for v in json.load(sys.stdin) if v['metadata'].get('ganeti.cname')=='snf-vol-4'), ''))")
check "volume 4 is an O(1) clone of the snapshot in the store" bash -c "[[ \$('$BIN/archip' --store '$STORE' info '$V4' --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"parent\"])') == snf-snap-1-1 ]]"
# --- clone (source_volid): snf-vol-3 is held by the running instance's node daemon; a
# write acknowledged through its device must be in the clone.
python3 -c "import sys; sys.stdout.buffer.write(bytes(range(256))*4096)" > "$W/pattern"
DEV3=$(dev_of "$(store_name snf-vol-3)")
run "write 1 MiB through snf-vol-3's device ($DEV3, O_DIRECT + fsync)" dd if="$W/pattern" of="$DEV3" bs=1M seek=4 oflag=direct conv=notrunc,fsync status=none
run "cinder create --source-volid 3 --hint server_id=$SID --name clone3 (no size: the source's)" cinder_ create --source-volid 3 --hint "server_id=$SID" --name clone3
check "volume 5 becomes in-use" wait_status 5 in-use
check "cinder show 5: source_volid 3, size 1" bash -c "$(declare -f NS cinder_ vfield); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; [[ \$(vfield 5 source_volid) == 3 && \$(vfield 5 size) == 1 ]]"
V5=$(store_name snf-vol-5)
check "volume 5 is an O(1) clone of a snapshot of snf-vol-3's store volume" bash -c "[[ \$('$BIN/archip' --store '$STORE' info '$V5' --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"parent\"])') == '$(store_name snf-vol-3).origin-of-$V5' ]]"
DEV5=$(dev_of "$V5")
check "the clone holds the write acknowledged before it ($DEV5)" bash -c "dd if='$DEV5' bs=1M skip=4 count=1 iflag=direct status=none | cmp - '$W/pattern'"
check "bob: source_volid 3 (alice's) -> 404 itemNotFound" bash -c "[[ \$(ip netns exec $GNT_NETNS curl -s -o '$W/b3' -w '%{http_code}' -H 'X-Auth-Token: $BOB' -H 'Content-Type: application/json' -X POST $U/volume/v3/volumes -d '{\"volume\":{\"source_volid\":\"3\",\"server_id\":\"$SID\"}}') == 404 ]] && grep -q itemNotFound '$W/b3'"

run "cinder extend 3 2" cinder_ extend 3 2
for _ in $(seq 1 120); do [[ $(vfield 3 size) == 2 && $(vstatus 3) == in-use ]] && break; sleep 0.5; done
check "volume 3 is 2 GB and in-use" bash -c "$(declare -f NS cinder_ vfield); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; [[ \$(vfield 3 size) == 2 ]]"
check "Ganeti grew snf-vol-3 to 2048 MiB" test "$(gnt_disks snf-$SID)" == "5 1024,1024,2048,1024,1024"
V3=$(archip list --json | python3 -c "import json,sys; print(next((v['name'] for v in json.load(sys.stdin) if v['metadata'].get('ganeti.cname')=='snf-vol-3'), ''))")
check "the store volume of snf-vol-3 is 2 GiB" bash -c "[[ \$('$BIN/archip' --store '$STORE' info '$V3' --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"size\"])') == 2147483648 ]]"
check "quota: alice uses 6 GiB" usage_is 6442450944 0

# --- isolation, tokens, bad input --------------------------------------------------------
check "bob: GET volume 1 -> 404 itemNotFound" bash -c "[[ \$(ip netns exec $GNT_NETNS curl -s -o '$W/b1' -w '%{http_code}' -H 'X-Auth-Token: $BOB' $U/volume/v3/volumes/1) == 404 ]] && grep -q itemNotFound '$W/b1'"
check "bob: DELETE volume 3 -> 404" bash -c "[[ \$(ip netns exec $GNT_NETNS curl -s -o /dev/null -w '%{http_code}' -X DELETE -H 'X-Auth-Token: $BOB' $U/volume/v3/volumes/3) == 404 ]]"
check "bob: cinder list is empty" bash -c "$(declare -f NS); GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; [[ \$(NS cinder --os-auth-type admin_token --os-token $BOB --os-endpoint $U/volume/v3 --os-project-id any --os-volume-api-version 3.0 list 2>/dev/null | grep -c '^| [0-9]') == 0 ]]"
check "no token -> 401 unauthorized" bash -c "[[ \$(ip netns exec $GNT_NETNS curl -s -o '$W/b2' -w '%{http_code}' $U/volume/v3/volumes) == 401 ]] && grep -q unauthorized '$W/b2'"
check "a bad token -> 401" bash -c "[[ \$(ip netns exec $GNT_NETNS curl -s -o /dev/null -w '%{http_code}' -H 'X-Auth-Token: nope' $U/compute/v2.1/servers) == 401 ]]"
before=$(state); gbefore=$(gnt_disks snf-$SID)
refused() {  # NAME STATUS FAULT JSON
  local code; code=$(api -H "X-Auth-Token: $TOKEN" -H 'Content-Type: application/json' -X POST "$U/volume/v3/volumes" -d "$4")
  if [[ $code == "$2" ]] && grep -q "\"$3\"" "$W/body" && [[ $(state) == "$before" ]]; then ok "refused: $1 ($code $(head -c 160 "$W/body"))"
  else bad "refused: $1 (got $code $(head -c 200 "$W/body"))"; fi
}
refused "size abc" 400 badRequest "{\"volume\":{\"size\":\"abc\",\"server_id\":$SID}}"
refused "size -1" 400 badRequest "{\"volume\":{\"size\":-1,\"server_id\":$SID}}"
refused "huge size" 400 badRequest "{\"volume\":{\"size\":1000000,\"server_id\":$SID}}"
refused "no server_id and an unknown volume type" 400 badRequest '{"volume":{"size":1,"volume_type":"gold"}}'
refused "unknown server" 400 badRequest '{"volume":{"size":1,"server_id":999}}'
refused "two sources" 400 badRequest "{\"volume\":{\"size\":1,\"server_id\":$SID,\"imageRef\":\"$IMG\",\"snapshot_id\":\"$SNAP\"}}"
refused "source_volid larger than size" 400 badRequest "{\"volume\":{\"size\":1,\"server_id\":$SID,\"source_volid\":\"3\"}}"
refused "source_volid and snapshot_id" 400 badRequest "{\"volume\":{\"size\":2,\"server_id\":$SID,\"source_volid\":\"3\",\"snapshot_id\":\"$SNAP\"}}"
refused "over quota" 413 overLimit "{\"volume\":{\"size\":2,\"server_id\":$SID}}"
refused "malformed JSON" 400 badRequest '{"volume":'
check "Ganeti unchanged by refused requests" test "$(gnt_disks snf-$SID)" == "$gbefore"

# --- delete -------------------------------------------------------------------------------
# Ganeti removes a disk from a running instance only with hotplug, which the lab's fake
# hypervisor lacks (Cyclades' rule too): stop the instance behind Cyclades' back first.
run "gnt-instance shutdown snf-$SID (no hotplug in the fake hypervisor)" ip netns exec "$GNT_NETNS" gnt-instance shutdown --timeout=0 "snf-$SID"
run "cinder delete 3" cinder_ delete 3
check "volume 3 becomes deleted" wait_status 3 deleted
check "Ganeti has four disks again" test "$(gnt_disks snf-$SID)" == "4 1024,1024,1024,1024"
check "quota: alice uses 4 GiB" usage_is 4294967296 0
check "the clone (volume 5) outlives its source in the store" test -n "$(store_name snf-vol-5)"
cinder_ snapshot-delete "$SNAP" > "$W/snapdel.txt" 2>&1; rc=$?
check "cinder snapshot-delete of a snapshot with a clone (volume 4): refused, exit 1, names the clone" bash -c "[[ $rc == 1 ]] && grep -q 'clones' '$W/snapdel.txt'"
run "nova delete vm1" nova_ delete "$SID"
for _ in $(seq 1 120); do ip netns exec "$GNT_NETNS" gnt-instance list --no-headers -o name 2>/dev/null | grep -qx "snf-$SID" || break; sleep 0.5; done
sleep 1
check "Ganeti no longer has snf-$SID" bash -c "! ip netns exec $GNT_NETNS gnt-instance list --no-headers -o name | grep -qx snf-$SID"
check "nova show $SID -> not found" bash -c "$(declare -f NS nova_ nova_as); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; ! nova_ show $SID >/dev/null 2>&1"
check "quota: nothing used, nothing pending" usage_settles_to 0 0
check "no origin snapshot is left in the store (removed with the clone)" bash -c "! '$BIN/archip' --store '$STORE' list --json | grep -q origin-of"
# --- openstack (python3-openstackclient) and nova boot --image NAME ------------------------
# openstack looks images up in /image (Glance v2 shape), nova in <compute>/v2/images?name=.
if command -v openstack >/dev/null; then
  run "openstack server create --image debian-12 --boot-from-volume 1 --block-device source_type=blank,... --wait vm2" \
    ostack server create --flavor 1 --image debian-12 --boot-from-volume 1 --block-device source_type=blank,destination_type=volume,volume_size=1 --wait vm2
  SID2=$(ostack server show vm2 -f value -c id 2>/dev/null)
  check "openstack server list: vm2 ($SID2) ACTIVE, image debian-12, flavor small" bash -c "$(declare -f NS ostack); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; ostack server list -f value -c Name -c Status -c Image -c Flavor 2>/dev/null | grep -qx 'vm2 ACTIVE debian-12 small'"
  check "Ganeti has snf-$SID2 with two 1 GiB disks" test "$(gnt_disks snf-$SID2)" == "2 1024,1024"
  run "openstack volume create --size 1 --hint server_id=$SID2 ov1" ostack volume create --size 1 --hint "server_id=$SID2" ov1
  OV1=$(ostack volume show ov1 -f value -c id 2>/dev/null)
  for _ in $(seq 1 120); do [[ $(ostack volume show ov1 -f value -c status 2>/dev/null) == in-use ]] && break; sleep 0.5; done
  check "openstack volume show ov1 ($OV1): in-use, 1 GB" bash -c "$(declare -f NS ostack); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; [[ \$(ostack volume show ov1 -f value -c status -c size 2>/dev/null | tr '\n' ' ') == '1 in-use ' ]]"
  run "openstack volume create --source ov1 --hint server_id=$SID2 ov2 (a clone)" ostack volume create --source ov1 --hint "server_id=$SID2" ov2
  for _ in $(seq 1 120); do [[ $(ostack volume show ov2 -f value -c status 2>/dev/null) == in-use ]] && break; sleep 0.5; done
  check "openstack volume show ov2: in-use, source_volid $OV1" bash -c "$(declare -f NS ostack); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; [[ \$(ostack volume show ov2 -f value -c status -c source_volid 2>/dev/null | tr '\n' ' ') == '$OV1 in-use ' ]]"
  check "openstack volume list: four volumes of vm2 in-use" bash -c "$(declare -f NS ostack); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; [[ \$(ostack volume list 2>/dev/null | grep -Ec '\\| in-use +\\| +1 \\| Attached to vm2 on /dev/vd[a-d] ') == 4 ]]"
  check "openstack server volume list vm2: /dev/vda../dev/vdd" bash -c "$(declare -f NS ostack); TOKEN=$TOKEN U=$U GNT_NETNS=$GNT_NETNS GNT_CLEAN_PATH=$GNT_CLEAN_PATH; [[ \$(ostack server volume list vm2 -f value -c Device 2>/dev/null | tr '\n' ' ') == '/dev/vda /dev/vdb /dev/vdc /dev/vdd ' ]]"
  check "Ganeti has four disks on snf-$SID2" test "$(gnt_disks snf-$SID2)" == "4 1024,1024,1024,1024"
  ostack server add volume vm2 "$OV1" > "$W/osattach.txt" 2>&1; rc=$?
  check "openstack server add volume of a volume in use: exit 1, 400" bash -c "[[ $rc == 1 ]] && grep -q '400' '$W/osattach.txt'"
  run "openstack server delete --wait vm2" ostack server delete --wait vm2
  check "Ganeti no longer has snf-$SID2" bash -c "! ip netns exec $GNT_NETNS gnt-instance list --no-headers -o name | grep -qx snf-$SID2"
  run "nova boot --flavor 1 --image debian-12 (by name) --poll vm3" nova_ boot --flavor 1 --image debian-12 --poll vm3
  SID3=$(nova_ list 2>/dev/null | awk -F'|' '$3 ~ / vm3 / {gsub(/ /,"",$2); print $2}')
  api -H "X-Auth-Token: $TOKEN" "$U/compute/v2.1/servers/$SID3" >/dev/null
  V10=$(python3 -c "import json; print(json.load(open('$W/body'))['server']['volumes'][0])" 2>/dev/null)
  check "vm3 ($SID3) has one 1 GiB disk (volume $V10) cloned from the image's snapshot" bash -c "[[ '$(gnt_disks snf-$SID3)' == '1 1024' && \$('$BIN/archip' --store '$STORE' info '$(store_name snf-vol-$V10)' --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"parent\"])') == debian-img-v1 ]]"
  run "nova delete vm3" nova_ delete "$SID3"
  for _ in $(seq 1 120); do ip netns exec "$GNT_NETNS" gnt-instance list --no-headers -o name 2>/dev/null | grep -qx "snf-$SID3" || break; sleep 0.5; done
  sleep 1
  check "quota after openstack and nova: nothing used, nothing pending" usage_settles_to 0 0
else
  log "SKIP openstack checks: python3-openstackclient is not installed (make deps)"
fi
run "reconcile-servers is clean" snf reconcile-servers --store "$STORE"

kill -TERM $APIPID; wait $APIPID; rc=$?
check "SIGTERM: cyclades-api exits 0" test $rc == 0
check "one log line per request (GET/POST/PUT/DELETE ... status ms)" bash -c "[[ \$(grep -Ec '^(GET|POST|PUT|DELETE) /[^ ]* [0-9]{3} [0-9.]+ms$' '$W/api.log') -ge 40 ]]"

if [[ ${GNT_KEEP:-no} != yes ]]; then run "cluster-down.sh" "$GL/cluster-down.sh"; fi
rm -rf "$RUN"
echo "$passed passed, $failed failed"
if [[ $failed == 0 ]]; then rm -rf "$W"; exit 0; fi
log "logs kept in $W"; exit 1
