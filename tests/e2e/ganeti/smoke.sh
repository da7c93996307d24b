#!/bin/bash
# End-to-end smoke test of the Ganeti lab harness with the throw-away
# provider test-provider/ (installed as "testprov"):
#   cluster-up, instance add/grow-disk/modify --disk add/deactivate-disks/
#   activate-disks, gnt-backup export, RAPI GET /2/info and a RAPI instance
#   create, instance removal, extstorage_driver.py without the cluster,
#   cluster-down.  Ends with "N passed, N failed"; exits 1 on any failure.
# Root.  GNT_SMOKE_KEEP=yes: leave the cluster up at the end.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
case ${1:-} in -h|--help) gnt_usage "$0"; exit 0;; esac
gnt_clean_env "$0" "$@"
need_root
cd /

HERE=$GNT_LAB_DIR
PROV=testprov
TP=/var/tmp/gnt-testprov
CALLS=$TP/calls.log
I1=smoke1.$GNT_DOMAIN
I2=smoke2.$GNT_DOMAIN
DRIVER=$HERE/extstorage_driver.py
OUT=$(mktemp -d /var/tmp/gnt-lab-smoke.XXXXXX)
passed=0 failed=0

ok()   { passed=$((passed + 1)); log "ok   - $*"; }
bad()  { failed=$((failed + 1)); log "FAIL - $*"; }
# run NAME CMD...: run a command, record pass/fail, show its output on failure.
run() {
  local name=$1; shift
  local f t
  f="$OUT/$(printf '%02d' $((passed + failed)))-${name//[^A-Za-z0-9_.-]/_}.log"
  t=$(date +%s.%N)
  if "$@" >"$f" 2>&1; then
    ok "$name ($(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s)"
  else
    bad "$name (exit $?), last lines of $f:"; tail -n 15 "$f" | sed 's/^/      /' >&2
    return 1
  fi
}
# check NAME CMD...: an assertion (silent command).
check() {
  local name=$1; shift
  if "$@" >/dev/null 2>&1; then ok "$name"; else bad "$name"; fi
}
mark() { CALLS_MARK=$(wc -l < "$CALLS" 2>/dev/null || echo 0); }
since() { tail -n +"$((CALLS_MARK + 1))" "$CALLS" 2>/dev/null; }
# seen ACTION PATTERN...: a provider call since the last mark with all patterns.
seen() {
  local action=$1; shift
  local lines; lines=$(since | awk -v a="$action" '$2 == a')
  local p; for p in "$@"; do lines=$(grep -F -- "$p" <<<"$lines"); done
  [[ -n $lines ]]
}
seen_both() { seen "$1" "VOL_NAME=$2 " && seen "$1" "VOL_NAME=$3 "; }
actions() { since | awk '{print $2}' | tr '\n' ' '; }
vol_dev() { losetup -j "$TP/vols/$1.img" -n -O NAME 2>/dev/null | head -n1; }
vol_bytes() { local d; d=$(vol_dev "$1"); [[ -n $d ]] && blockdev --getsize64 "$d"; }
gnt() { nsx "$@"; }
rapi() {  # METHOD PATH [JSON]
  local data=(); [[ -n ${3:-} ]] && data=(-H 'Content-Type: application/json' -d "$3")
  nsx curl -sk -u "$GNT_RAPI_USER:$GNT_RAPI_PASS" -X "$1" "${data[@]}" \
    -w '\n%{http_code}\n' "https://127.0.0.1:$GNT_RAPI_PORT$2"
}
rapi_wait_job() {  # JOBID -> 0 on success
  local j=$1 st body
  for _ in $(seq 1 300); do
    body=$(rapi GET "/2/jobs/$j" | head -n -1)
    st=$(jq -r .status <<<"$body" 2>/dev/null)
    case $st in
      success) return 0;;
      error|canceled) echo "$body" | jq -c '.opresult' >&2; return 1;;
    esac
    sleep 0.2
  done
  echo "job $j still $st" >&2; return 1
}

log "smoke test, logs in $OUT"

# --- cluster up ---------------------------------------------------------------------
if [[ ! -e $GNT_STATE_DIR/hosts.orig ]]; then cp -p "$GNT_HOSTS_FILE" "$OUT/hosts.before"; fi
run "cluster-up.sh $PROV=test-provider" "$HERE/cluster-up.sh" "$PROV=$HERE/test-provider" || {
  echo "$passed passed, $failed failed"; exit 1; }
[[ -e $OUT/hosts.before ]] || cp -p "$GNT_STATE_DIR/hosts.orig" "$OUT/hosts.before"
for i in $I1 $I2; do   # leftovers of an interrupted run
  gnt gnt-instance list --no-headers -o name 2>/dev/null | grep -qx "$i" &&
    gnt gnt-instance remove -f "$i" >/dev/null 2>&1
done
gnt gnt-backup remove "$I1" >/dev/null 2>&1
mkdir -p "$TP"; : >> "$CALLS"
check "gnt-storage diagnose: $PROV valid" \
  bash -c "cd / && ip netns exec $GNT_NETNS gnt-storage diagnose | grep -A2 '^Provider: $PROV\$' | grep -q 'status: valid'"
check "gnt-os list has $GNT_OS_NAME" bash -c "ip netns exec $GNT_NETNS gnt-os list --no-headers | grep -qx $GNT_OS_NAME"

# --- instance add -----------------------------------------------------------------------
mark
run "gnt-instance add -t ext (1G, origin=snapshot:foo)" gnt gnt-instance add -t ext \
  --disk "0:size=1G,provider=$PROV,origin=snapshot:foo" -o "$GNT_OS_NAME" \
  --no-name-check --no-ip-check -H fake -n "$GNT_NODE_NAME" "$I1"
log "     calls: $(actions)"
V0=$(since | awk '$2 == "create"' | grep -o 'VOL_NAME=[^ ]*' | head -n1 | cut -d= -f2)
check "create got VOL_SIZE=1024 EXTP_ORIGIN=snapshot:foo EXTP_PROVIDER EXTP_ACCESS" \
  seen create "VOL_NAME=$V0 " VOL_SIZE=1024 EXTP_ORIGIN=snapshot:foo "EXTP_PROVIDER=$PROV" EXTP_ACCESS=kernelspace VOL_UUID=
check "VOL_NAME is UUID.ext.disk0" grep -Eq '^[0-9a-f-]{36}\.ext\.disk0$' <<<"$V0"
check "attach got EXTP_ORIGIN too" seen attach "VOL_NAME=$V0 " EXTP_ORIGIN=snapshot:foo
check "setinfo got VOL_METADATA=originstname+$I1" seen setinfo "VOL_METADATA=originstname+$I1"
check "open got VOL_OPEN_EXCLUSIVE=True" seen open VOL_OPEN_EXCLUSIVE=True
check "provider ran with cwd=provider dir, umask 0077, LC_ALL=C" seen create umask=0077 LC_ALL=C cwd=$HERE/test-provider
check "$I1 is running" bash -c "ip netns exec $GNT_NETNS gnt-instance list --no-headers -o status $I1 | grep -qx running"
check "noop OS stamped disk 0" bash -c "head -c 64 $(vol_dev "$V0") | grep -aq 'ganeti-noop:$I1'"

# --- grow-disk ----------------------------------------------------------------------------
mark
run "gnt-instance grow-disk $I1 0 512M" gnt gnt-instance grow-disk "$I1" 0 512M
log "     calls: $(actions)"
check "grow got VOL_SIZE=1024 VOL_NEW_SIZE=1536" seen grow "VOL_NAME=$V0 " VOL_SIZE=1024 VOL_NEW_SIZE=1536
check "attached device is 1536 MiB" test "$(vol_bytes "$V0")" = $((1536 * 1048576))

# --- modify --disk add ---------------------------------------------------------------------
mark
run "gnt-instance modify --disk add:size=512M,name=snf-vol-7" gnt gnt-instance modify \
  --disk "add:size=512M,provider=$PROV,name=snf-vol-7" "$I1"
log "     calls: $(actions)"
V1=$(since | awk '$2 == "create"' | grep -o 'VOL_NAME=[^ ]*' | head -n1 | cut -d= -f2)
check "create got VOL_CNAME=snf-vol-7 VOL_SIZE=512, disk1" seen create VOL_CNAME=snf-vol-7 VOL_SIZE=512 "VOL_NAME=$V1 "
check "new disk is named *.ext.disk1" grep -q '\.ext\.disk1$' <<<"$V1"
check "setinfo for snf-vol-7" seen setinfo VOL_CNAME=snf-vol-7 "VOL_METADATA=originstname+$I1"

# --- deactivate / activate disks ----------------------------------------------------------
run "gnt-instance shutdown $I1" gnt gnt-instance shutdown --timeout=0 "$I1"
mark
run "gnt-instance deactivate-disks $I1" gnt gnt-instance deactivate-disks "$I1"
log "     calls: $(actions)"
check "detach called for both disks" seen_both detach "$V0" "$V1"
check "no loop device left for disk 0/1" test -z "$(vol_dev "$V0")$(vol_dev "$V1")"
mark
run "gnt-instance activate-disks $I1" gnt gnt-instance activate-disks "$I1"
log "     calls: $(actions)"
check "activate-disks: attach+open" seen open "VOL_NAME=$V1 "
check "disks attached again, disk 0 still 1536 MiB" test "$(vol_bytes "$V0")" = $((1536 * 1048576))
run "gnt-instance startup $I1" gnt gnt-instance startup "$I1"

# --- export ------------------------------------------------------------------------------------
mark
run "gnt-backup export -n NODE $I1" gnt gnt-backup export -n "$GNT_NODE_NAME" "$I1"
log "     calls: $(actions)"
check "snapshot got VOL_SNAPSHOT_NAME=$V0.snap VOL_SNAPSHOT_SIZE=1536" \
  seen snapshot "VOL_NAME=$V0 " "VOL_SNAPSHOT_NAME=$V0.snap" VOL_SNAPSHOT_SIZE=1536
check "snapshot volume attached and removed" seen remove "VOL_NAME=$V0.snap "
EXP=/var/lib/ganeti/export/$I1
# config.ini names each disk's dump file by the disk's UUID (disk0_dump).
dump0=$(awk -F' *= *' '$1 == "disk0_dump" {print $2}' "$EXP/config.ini" 2>/dev/null)
check "export: config.ini with disk_count = 2, disk0_dump file present" \
  bash -c "grep -qx 'disk_count = 2' $EXP/config.ini && test -n '$dump0' -a -f '$EXP/$dump0'"
check "exported disk 0 is 1536 MiB and carries the noop stamp" \
  bash -c "test \$(stat -c %s '$EXP/$dump0') = $((1536 * 1048576)) && head -c 64 '$EXP/$dump0' | grep -aq 'ganeti-noop:$I1'"
check "no .snap volume left" bash -c "! ls $TP/vols/*.snap.img"
check "$I1 running again after export" bash -c "ip netns exec $GNT_NETNS gnt-instance list --no-headers -o status $I1 | grep -qx running"
run "gnt-backup remove $I1" gnt gnt-backup remove "$I1"

# --- RAPI -------------------------------------------------------------------------------------------
r=$(rapi GET /2/info)
check "RAPI GET /2/info = 200, name $GNT_CLUSTER_NAME" \
  bash -c '[[ $(tail -n1 <<<"$1") == 200 ]] && head -n -1 <<<"$1" | jq -e --arg n "$2" ".name == \$n"' _ "$r" "$GNT_CLUSTER_NAME"
check "RAPI without auth = 401" bash -c "[[ \$(ip netns exec $GNT_NETNS curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:$GNT_RAPI_PORT/2/info) == 401 ]]"
body=$(jq -cn --arg n "$I2" --arg p "$PROV" --arg node "$GNT_NODE_NAME" --arg os "$GNT_OS_NAME" \
  '{__version__: 1, mode: "create", name: $n, disk_template: "ext",
    disks: [{size: 1024, provider: $p, origin: "snapshot:foo", name: "snf-vol-1"}],
    nics: [], os: $os, pnode: $node, name_check: false, ip_check: false, hypervisor: "fake"}')
mark
r=$(rapi POST /2/instances "$body")
job=$(head -n -1 <<<"$r")
if [[ $(tail -n1 <<<"$r") == 200 && $job =~ ^\"?[0-9]+\"?$ ]]; then
  ok "RAPI POST /2/instances accepted, job ${job//\"/}"
  run "RAPI job ${job//\"/} (create $I2) succeeded" rapi_wait_job "${job//\"/}"
else
  bad "RAPI POST /2/instances: $r"
fi
log "     calls: $(actions)"
check "RAPI create: create got VOL_CNAME=snf-vol-1 EXTP_ORIGIN=snapshot:foo" seen create VOL_CNAME=snf-vol-1 EXTP_ORIGIN=snapshot:foo VOL_SIZE=1024
r=$(rapi GET "/2/instances/$I2")
check "RAPI GET /2/instances/$I2: ext disk, running" \
  bash -c 'head -n -1 <<<"$1" | jq -e ".disk_template == \"ext\" and .status == \"running\""' _ "$r"

# --- remove ---------------------------------------------------------------------------------------
mark
run "gnt-instance remove -f $I1" gnt gnt-instance remove -f "$I1"
run "gnt-instance remove -f $I2" gnt gnt-instance remove -f "$I2"
log "     calls: $(actions)"
check "remove called for $I1's two disks" seen_both remove "$V0" "$V1"
check "no volume left in $TP/vols" bash -c "! ls $TP/vols/*.img"
check "no loop device on a testprov volume" bash -c "! losetup -a | grep -q $TP/"

# --- extstorage_driver.py (no cluster involved) -----------------------------------------------
drv() { "$GNT_PY" "$DRIVER" "$PROV" "$@"; }
DV=drv-$(date +%s).ext.disk0
DU=00000000-0000-4000-8000-$(printf '%012d' $$)
P=(--vol "$DV" --uuid "$DU" --name snf-vol-42 --param origin=snapshot:bar)
run "driver diagnose" drv diagnose
mark
run "driver create 64 MiB" drv create --size 64 "${P[@]}"
check "driver create: VOL_SIZE=64 EXTP_ORIGIN VOL_CNAME VOL_UUID" seen create "VOL_NAME=$DV " VOL_SIZE=64 EXTP_ORIGIN=snapshot:bar VOL_CNAME=snf-vol-42 "VOL_UUID=$DU"
check "driver attach: block device, 64 MiB" bash -c '"$1" "$2" "$3" attach "${@:4}" | jq -e ".device.attached and .device.major == 7 and .device.device_bytes == 67108864"' _ "$GNT_PY" "$DRIVER" "$PROV" "${P[@]}"
run "driver grow 64 -> 128 MiB (device sees it)" drv grow --size 64 --new-size 128 "${P[@]}"
check "driver grow: VOL_SIZE=64 VOL_NEW_SIZE=128" seen grow VOL_SIZE=64 VOL_NEW_SIZE=128
run "driver open" drv open "${P[@]}"
check "driver open: VOL_OPEN_EXCLUSIVE=True" seen open "VOL_NAME=$DV " VOL_OPEN_EXCLUSIVE=True
run "driver open --shared" drv open --shared "${P[@]}"
check "driver open --shared: VOL_OPEN_EXCLUSIVE=False" seen open VOL_OPEN_EXCLUSIVE=False
run "driver close" drv close "${P[@]}"
run "driver setinfo" drv setinfo --metadata "originstname+inst 1/x" "${P[@]}"
check "driver setinfo: text sanitised by Ganeti" seen setinfo "VOL_METADATA=originstname+inst_1_x"
run "driver verify" drv verify "${P[@]}"
run "driver snapshot" drv snapshot --size 128 "${P[@]}"
check "driver snapshot: VOL_SNAPSHOT_NAME=$DV.snap VOL_SNAPSHOT_SIZE=128" seen snapshot "VOL_SNAPSHOT_NAME=$DV.snap" VOL_SNAPSHOT_SIZE=128
run "driver attach $DV.snap" drv attach --vol "$DV.snap"
run "driver remove $DV.snap" drv remove --vol "$DV.snap"
run "driver shutdown (detach)" drv shutdown "${P[@]}"
check "driver: detached" test -z "$(vol_dev "$DV")"
run "driver detach again (idempotent)" drv detach "${P[@]}"
run "driver remove" drv remove "${P[@]}"
check "driver: volume gone" test ! -e "$TP/vols/$DV.img"
drv attach --vol "$DV" >"$OUT/driver-neg.json" 2>"$OUT/driver-neg.err"; rc=$?
check "driver attach of a missing volume exits 1 with Ganeti's text" \
  bash -c "[[ $rc == 1 ]] && grep -q \"External storage's attach script failed\" $OUT/driver-neg.err && jq -e '.ok == false' $OUT/driver-neg.json"
drv attach --vol x --param bogus >/dev/null 2>&1; rc=$?
check "driver usage error exits 2" test "$rc" = 2
"$GNT_PY" "$DRIVER" nosuchprovider diagnose >/dev/null 2>"$OUT/driver-noprov.err"; rc=$?
check "driver: unknown provider exits 1 (Ganeti: not found in search path)" \
  bash -c "[[ $rc == 1 ]] && grep -q 'not found in search path' $OUT/driver-noprov.err"

cp "$CALLS" "$OUT/calls.log" 2>/dev/null

# --- cluster down ----------------------------------------------------------------------------------
if [[ ${GNT_SMOKE_KEEP:-no} == yes ]]; then
  log "GNT_SMOKE_KEEP=yes: cluster left up"
else
  run "cluster-down.sh" "$HERE/cluster-down.sh"
  check "netns $GNT_NETNS gone" bash -c "! ip netns list | grep -qw $GNT_NETNS"
  check "/etc/hosts restored byte for byte" cmp "$OUT/hosts.before" "$GNT_HOSTS_FILE"
  check "no Ganeti daemon left" bash -c "! pgrep -f '/usr/s?bin/ganeti-'"
  check "no loop device on a testprov volume" bash -c "! losetup -a | grep -q gnt-testprov"
  check "no blackhole route left" bash -c "! ip route show | grep -q 'blackhole $GNT_SUBNET'"
fi

log "smoke took $(elapsed) s"
if ((failed == 0)); then rm -rf "$OUT"; else log "logs kept in $OUT"; fi
echo "$passed passed, $failed failed"
((failed == 0))
