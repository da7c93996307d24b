#!/bin/bash
# On the lab of up.sh: the Cyclades control plane on the controller
# namespace ($GC_CTRL; no Ganeti, attaches nothing) with its own database:
# snf-manage and cyclades-api talk to Ganeti's RAPI on the cluster's master
# IP and to the shared store. A server made through Cyclades runs on node B
# (not the master) and its guest writes there; snf-manage snapshot-create and
# the API's POST /volume/v3/snapshots, both on the controller, get snapshots
# that hold every write acknowledged before they were asked for (the store
# delegates them to B's daemon, the holder); with B's daemon stopped, the
# request fails within its timeout, in one line naming the holder.
# Prints the times and "N passed, N failed". Root; runs up.sh first.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
case ${1:-} in -h|--help) gc_usage "$0"; exit 0;; esac
gc_clean_env "$0" "$@"
need_root
. "$GC_LAB_DIR/checks.sh"
A=$(master); B=$(set -- $GC_NODES; echo "$2")
[[ -n $B && -n $GC_CTRL ]] || die "needs two nodes (GC_NODES) and a controller (GC_CTRL)"
C=$GC_CTRL DA=$(node_dir "$A") DB=$(node_dir "$B") DC=$(node_dir "$GC_CTRL")
GO=$GC_ROOT/handoff.go GIO=$GC_LAB_DIR/guestio.py
for b in snf-manage cyclades-api; do [[ -x $GC_ARCHIP_BIN/$b ]] || die "no $b in $GC_ARCHIP_BIN"; done
W=$(mktemp -d /var/tmp/gntc-controller.XXXXXX)
chmod 0755 "$W"
run "up.sh" "$GC_LAB_DIR/up.sh" || { echo "$passed passed, $failed failed"; exit 1; }
setup_image
RAPI_USER=lab RAPI_PASS=lab-rapi-secret PORT=18790
DBF=$W/cyclades.db
# Everything Cyclades runs on the controller, with the controller's archip.conf.
snf() { nx "$C" "$GC_ARCHIP_BIN/snf-manage" "$@" --db "$DBF"; }
snfj() { snf "$@" --output json; }
ctl_curl() { nx "$C" curl -s -o "$W/body" -w '%{http_code}' "$@"; }

# --- Ganeti's RAPI, for the controller -------------------------------------------------
install -d -m 0750 "$DA/lib-ganeti/rapi"
echo "$RAPI_USER $RAPI_PASS write" > "$DA/lib-ganeti/rapi/users"
code=000
for _ in $(seq 100); do
  code=$(nx "$C" curl -sk -o /dev/null -w '%{http_code}' -u "$RAPI_USER:$RAPI_PASS" "https://$GC_MASTER_IP:5080/2/info" 2>/dev/null)
  [[ $code == 200 ]] && break; sleep 0.2
done
check "the controller reaches Ganeti's RAPI at $GC_MASTER_IP:5080 (200)" test "$code" = 200

# --- Cyclades on the controller ------------------------------------------------------------
run "backend-add (RAPI of the cluster; instances on $(node_fqdn "$B"))" snf backend-add lab --rapi "https://$GC_MASTER_IP:5080" \
  --user "$RAPI_USER" --password "$RAPI_PASS" --insecure --node "$(node_fqdn "$B")" --os "$GC_OS_NAME" --hypervisor fake
run "volume-type-create archipelago" snf volume-type-create archipelago --disk-template ext_archipelago
run "flavor-create small" snf flavor-create small --cpu 1 --ram 128 --disk 1 --volume-type archipelago
IMG_SHA=$(sha256sum "$GC_ROOT/images/img.raw" | cut -d' ' -f1)
IMG=$(snf image-register img --location snapshot:img-v1 --size 64M --checksum "$IMG_SHA")
TOKEN=$(snf user-create alice --quota 6G | awk '/^token:/ {print $2}')
check "image and user registered" bash -c "[[ -n '$IMG' && -n '$TOKEN' ]]"
t=$(now)
run "server-create vm1 (started) --wait" snf server-create vm1 --flavor small --user alice --image "$IMG" --wait
note_create=$(secs "$t" "$(now)")
SID=$(snfj server-list | jq_ "d[0]['id']")
I=snf-$SID
check "Ganeti runs $I on $(node_fqdn "$B")" bash -c "[[ \$1 == '$(node_fqdn "$B")' ]]" _ "$(nx "$A" gnt-instance list --no-headers -o pnode "$I")"
V=$(archip list --json | jq_ "next(v['name'] for v in d if v['metadata'].get('ganeti.cname') == 'snf-vol-1')")
check "the root volume $V is held exclusively by $(node_fqdn "$B")" holder_is "$B"

# --- the guest writes on B; snapshots asked on the controller ---------------------------------
rm -f "$GO"
start_writer "$B" g1 ""
wait_acks g1 30 || bad "the guest writer on $B acknowledged nothing (see $W/g1.err)"
# snapshot_holds SNAPNAME ACKS: the snapshot holds every record of ACKS.
snapshot_holds() {
  local seqs; seqs=$(wc -l < "$2")
  archip read "$1" --length $(( (16 << 20) + (seqs + 1) * 4096 )) > "$W/snap.raw" && "$GC_PY" "$GIO" check "$W/snap.raw" "$2"
}
# (A copy of the writer's acknowledgements so far; guestio reads the writer's name from the file's.)
head -n "$(wc -l < "$W/g1.ack")" "$W/g1.ack" > "$W/g1-before-1.ack"
t=$(now)
SNAP1=$(snf snapshot-create 1 --name s1 --store "$GC_STORE" --runtime-dir "$(node_rundir "$C")" 2>"$W/snap1.err")
T_SNF=$(secs "$t" "$(now)")
check "snf-manage snapshot-create on the controller prints an id ($T_SNF s)" grep -Eq '^[0-9a-f-]{36}$' <<<"$SNAP1"
S1=$(snfj snapshot-list | jq_ "next(s['store_name'] for s in d if s['id'] == '$SNAP1')" 2>/dev/null)
check "$B's daemon took it (its log names $S1)" grep -q "$S1" "$DB/serve.log"
run "the snapshot from snf-manage holds every write acknowledged before it" snapshot_holds "$S1" "$W/g1-before-1.ack"

# The API on the controller, as a client of it would ask.
nx "$C" setsid -f /bin/sh -c 'echo $$ > "$1"; shift; exec "$@" >"$0" 2>&1 </dev/null' "$W/api.log" "$W/api.pid" \
  "$GC_ARCHIP_BIN/cyclades-api" --db "$DBF" --listen "127.0.0.1:$PORT" --store "$GC_STORE" --runtime-dir "$(node_rundir "$C")"
for _ in $(seq 100); do [[ $(ctl_curl "http://127.0.0.1:$PORT/") != 000 ]] && break; sleep 0.1; done
head -n "$(wc -l < "$W/g1.ack")" "$W/g1.ack" > "$W/g1-before-2.ack"
t=$(now)
code=$(ctl_curl -X POST -H "X-Auth-Token: $TOKEN" -H 'Content-Type: application/json' \
  -d '{"snapshot": {"volume_id": "1", "name": "s2", "force": true}}' "http://127.0.0.1:$PORT/volume/v3/snapshots")
T_API=$(secs "$t" "$(now)")
check "POST /volume/v3/snapshots on the controller answers 202 ($T_API s; $(head -c 200 "$W/body"))" test "$code" = 202
SNAP2=$("$GC_PY" -c "import json; print(json.load(open('$W/body'))['snapshot']['id'])" 2>/dev/null)
S2=$(snfj snapshot-list | jq_ "next(s['store_name'] for s in d if s['id'] == '$SNAP2')" 2>/dev/null)
run "the snapshot from the API holds every write acknowledged before it" snapshot_holds "$S2" "$W/g1-before-2.ack"

# --- the holder's daemon down: a bounded, one-line refusal -------------------------------------
# SIGKILL: the volume stays held by B (a SIGTERM would detach it and let go).
kill -KILL "$(serve_pid "$B")" 2>/dev/null
for _ in $(seq 50); do serve_pid "$B" >/dev/null || break; sleep 0.1; done
check "$B's dead daemon still holds the volume" holder_is "$B"
t=$(now)
out=$(nx "$C" env ARCHIP_SNAPSHOT_TIMEOUT=5 "$GC_ARCHIP_BIN/snf-manage" snapshot-create 1 --name s3 --store "$GC_STORE" \
  --runtime-dir "$(node_rundir "$C")" --db "$DBF" 2>&1); rc=$?
T_DOWN=$(secs "$t" "$(now)")
check "with $B's daemon down, snapshot-create fails ($T_DOWN s) in one line naming the holder" \
  bash -c "(( $rc != 0 )) && [[ \$(wc -l <<<\"\$1\") == 1 ]] && grep -q '$(node_fqdn "$B")' <<<\"\$1\"" _ "$out"
log "snapshot-create with the holder down: $(head -c 300 <<<"$out")"
cleanup_writers
start_serve "$B" >/dev/null

kill -TERM "$(cat "$W/api.pid")" 2>/dev/null
log "TIMES: server-create $note_create s; snapshot through the holder, asked on the controller: snf-manage $T_SNF s, API $T_API s; holder down: refused after $T_DOWN s"
if [[ ${GC_KEEP:-no} != yes ]]; then
  run "gnt-instance remove $I" nx "$A" gnt-instance remove -f "$I"
  for s in $S1 $S2; do archip remove "$s" >/dev/null 2>&1; done
fi
if [[ $failed == 0 && ${GC_KEEP:-no} != yes ]]; then rm -rf "$W"; else log "logs kept in $W"; fi
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
