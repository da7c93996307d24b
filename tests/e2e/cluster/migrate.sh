#!/bin/bash
# Migration and failover run by Ganeti itself on the lab of up.sh (folder
# store): an instance added on node A (ext, provider archipelago, origin a
# snapshot); a guest writer (guestio.py) writes through A's loop device with
# O_DIRECT|O_DSYNC; `gnt-instance migrate -f` (live) to B: Ganeti opens the
# volume shared on B and closes it on A (checked in the provider call logs),
# every write acknowledged on A reads back through B's device, the writer
# carries on on B; migrate back; `gnt-instance failover -f` stopped, then
# running. Prints the handoff times (last write acknowledged on the source to
# the first accepted on the target), the command times, and ends with
# "N passed, N failed" (exit 1 on a failure). Root; runs up.sh first (a
# running lab is reused). GC_KEEP=yes leaves the instance.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
case ${1:-} in -h|--help) gc_usage "$0"; exit 0;; esac
gc_clean_env "$0" "$@"
need_root
. "$GC_LAB_DIR/checks.sh"
A=$(master); B=$(set -- $GC_NODES; echo "$2")
[[ -n $B ]] || die "needs two nodes (GC_NODES)"
DA=$(node_dir "$A") DB=$(node_dir "$B")
I=vm1.$GC_DOMAIN
GO=$GC_ROOT/handoff.go
GIO=$GC_LAB_DIR/guestio.py

W=$(mktemp -d /var/tmp/gntc-migrate.XXXXXX)
run "up.sh" "$GC_LAB_DIR/up.sh" || { echo "$passed passed, $failed failed"; exit 1; }
cleanup_writers
setup_image
gnt() { nx "$A" "$@"; }
gnt gnt-instance list --no-headers -o name | grep -qx "$I" && gnt gnt-instance remove -f "$I" >/dev/null 2>&1

# --- add on A ---------------------------------------------------------------------
run "gnt-instance add on $A (ext, archipelago, origin=snapshot:img-v1)" \
  gnt gnt-instance add -t ext --disk 0:size=1G,provider=archipelago,origin=snapshot:img-v1 \
  -o "$GC_OS_NAME" -H fake -n "$(node_fqdn "$A")" "$I"
V=$(gnt gnt-instance info --static "$I" | sed -n "s/.*logical_id: \['archipelago', '\(.*\)'\]/\1/p" | head -n1)
check "disk 0 is the volume $V in the shared store" archip info "$V"
check "disk 0 is published on $A (opened)" test -b "$(cat "$DA/dev.$V" 2>/dev/null)"

# --- writes on A, live migration to B -------------------------------------------------
start_writer "$A" a1 ""
wait_acks a1 100
check "the guest writer on $A has acknowledged writes" test -s "$W/a1.ack"
migrate_to "$B" "$A" b1 "a1" migrate1
check "Ganeti opened the volume shared (VOL_OPEN_EXCLUSIVE=False) on $B" called "$B" migrate1 "open $V excl=False"
check "Ganeti closed the volume on $A" called "$A" migrate1 "close $V"
check "the open on $B is in Ganeti's extstorage log on $B" bash -c "grep -l 'open $V excl=False' \$(find '$DB/log-ganeti/extstorage' -name 'open-*' -newer '$W/mark-migrate1') >/dev/null"
check "the close on $A is in Ganeti's extstorage log on $A" bash -c "grep -l 'close $V' \$(find '$DA/log-ganeti/extstorage' -name 'close-*' -newer '$W/mark-migrate1') >/dev/null"
check "$A's close came after $B's shared open, $B's exclusive open after $A's close" order_ok migrate1 \
  "$B open $V excl=False" "$A close $V" "$B open $V excl=True"
check "the volume is held exclusively by $(node_fqdn "$B") alone" holder_is "$B"
check "nothing is attached on $A any more" nothing_attached "$A"
wait_acks b1 50
check "every write acknowledged on $A reads back through $B's device (a1)" gio_check "$B" a1
check "the writes on $B read back on $B (b1, while it writes)" gio_check "$B" b1

# --- migrate back -------------------------------------------------------------------------
migrate_to "$A" "$B" a2 "a1 b1" migrate2
check "back: open shared on $A, close on $B, exclusive on $A" order_ok migrate2 \
  "$A open $V excl=False" "$B close $V" "$A open $V excl=True"
check "the volume is held exclusively by $(node_fqdn "$A") alone" holder_is "$A"
check "nothing is attached on $B any more" nothing_attached "$B"
wait_acks a2 50
check "every write of $A and $B reads back through $A's device (a1 b1 a2)" gio_check "$A" a1 b1 a2

# --- failover, instance stopped ----------------------------------------------------------------
run "gnt-instance shutdown (stops the guest writer on $A)" gnt gnt-instance shutdown "$I"
check "the guest writer stopped before the detach on $A" bash -c "grep -q 'stopped after seq' '$W/a2.err' && grep -q 'guest writer .* stopped before detach' '$DA/calls.log'"
mark failover1; t=$(now)
run "gnt-instance failover -f (stopped) to $B" gnt gnt-instance failover -f "$I"
T_FO_STOPPED=$(secs "$t" "$(now)")
P_FO_STOPPED=$(provider_share failover1 "$T_FO_STOPPED")
record_calls failover1
check "primary node is $B" primary_is "$B"
check "failover of a stopped instance left no hold on the volume" no_holder
run "the controller ($GC_CTRL) reads the volume from the store (attaching nothing)" \
  nx "${GC_CTRL:-$A}" bash -c "'$GC_ARCHIP_BIN/archip' --config '$(node_dir "${GC_CTRL:-$A}")/archip.conf' read '$V' --length $(( (16 << 20) + ($(last_seq a2) + 1) * 4096 )) > '$W/vol.raw'"
check "every acknowledged write is in the store (a1 b1 a2)" "$GC_PY" "$GIO" check "$W/vol.raw" "$W/a1.ack" "$W/b1.ack" "$W/a2.ack"
rm -f "$W/vol.raw"

# --- failover, instance running -------------------------------------------------------------------
touch "$GO"
run "gnt-instance startup on $B" gnt gnt-instance startup "$I"
start_writer "$B" b2 "a1 b1 a2"
wait_acks b2 50
rm -f "$GO"
start_writer "$A" a3 "a1 b1 a2 b2" --go "$GO"
mark failover2; t=$(now)
run "gnt-instance failover -f (running) to $A" gnt gnt-instance failover -f "$I"
T_FO_RUNNING=$(secs "$t" "$(now)")
P_FO_RUNNING=$(provider_share failover2 "$T_FO_RUNNING")
check "primary node is $A" primary_is "$A"
wait_acks a3 50
GAP_FO=$(handoff b2 a3)
check "the guest writer stopped on $B before its disks were deactivated" grep -q 'guest writer .* stopped before' "$DB/calls.log"
check "every write of both nodes reads back through $A's device (a1 b1 a2 b2 a3)" gio_check "$A" a1 b1 a2 b2 a3
check "the volume is held exclusively by $(node_fqdn "$A") alone" holder_is "$A"
check "nothing is attached on $B" nothing_attached "$B"
record_calls failover2
run "gnt-instance shutdown" gnt gnt-instance shutdown "$I"

log "provider calls of each step (node action volume excl=...): $W/calls-*.txt"
log "TIMES ($GC_BACKEND): migrate A->B $T_migrate1 s (handoff $H_migrate1 s), migrate B->A $T_migrate2 s (handoff $H_migrate2 s), failover stopped $T_FO_STOPPED s, failover running $T_FO_RUNNING s (guest I/O gap $GAP_FO s)"
log "PROVIDER ($GC_BACKEND, its calls' time in each Ganeti step): migrate A->B $P_migrate1; migrate B->A $P_migrate2; failover stopped $P_FO_STOPPED; failover running $P_FO_RUNNING"

if [[ ${GC_KEEP:-no} != yes ]]; then
  run "gnt-instance remove" gnt gnt-instance remove -f "$I"
  check "no instance volume is left in the store" vol_gone "$V"
  check "nothing is attached on $A" nothing_attached "$A"
  check "nothing is attached on $B" nothing_attached "$B"
fi
cleanup_writers
if [[ $failed == 0 && ${GC_KEEP:-no} != yes ]]; then rm -rf "$W"; else log "logs kept in $W"; fi
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
