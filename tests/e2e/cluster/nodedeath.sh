#!/bin/bash
# On the lab of up.sh (folder store), run by Ganeti: an instance live-migrated
# to node B (not the master) gets a grow, a disk add and snapshots while it
# runs there (gnt-backup export, and the provider's snapshot through B; the
# same snapshot asked from the controller namespace); then node B dies:
# SIGKILL of every process of B's namespaces (its archip serve, Ganeti's
# daemons, sshd, the guest writer) in the middle of writes, B marked offline,
# failover --ignore-consistency to A once B's lease ran out: A's open breaks
# the dead holder's lock, logged and recorded, the epoch moving on; B's
# daemon restarted (recovery) while A holds the volume. Then a node cut off,
# not dead: B's daemon paused (SIGSTOP) while its guest writes, the volume
# taken over by A, B resumed: none of B's writes lands, B's daemon logs that
# it is fenced. Gaps left are printed as "GAP -" lines and do not fail the
# run; checks do.
# Prints the times and "N passed, N failed". Root; runs up.sh first.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
case ${1:-} in -h|--help) gc_usage "$0"; exit 0;; esac
gc_clean_env "$0" "$@"
need_root
. "$GC_LAB_DIR/checks.sh"
A=$(master); B=$(set -- $GC_NODES; echo "$2")
[[ -n $B ]] || die "needs two nodes (GC_NODES)"
DA=$(node_dir "$A") DB=$(node_dir "$B") C=${GC_CTRL:-$A}
I=vm2.$GC_DOMAIN
GO=$GC_ROOT/handoff.go
GIO=$GC_LAB_DIR/guestio.py
gaps=0
gap() { gaps=$((gaps + 1)); log "GAP  - $*"; }
note() { log "note - $*"; }
W=$(mktemp -d /var/tmp/gntc-nodedeath.XXXXXX)
run "up.sh" "$GC_LAB_DIR/up.sh" || { echo "$passed passed, $failed failed"; exit 1; }
cleanup_writers
setup_image
gnt() { nx "$A" "$@"; }
# Ganeti's CLI asks before --ignore-consistency and answers no without a tty:
# submit the opcode as the CLI would.
failover_ignoring_consistency() {
  nx "$A" "$GC_PY" -c "
import sys; sys.path.insert(0, '/usr/share/ganeti/default')
from ganeti import cli, opcodes
cli.SubmitOpCode(opcodes.OpInstanceFailover(instance_name='$I', ignore_consistency=True, shutdown_timeout=30))"
}
archip_on() { local n=$1; shift; nx "$n" "$GC_ARCHIP_BIN/archip" --config "$(node_dir "$n")/archip.conf" "$@"; }
node_online() { [[ $(nx "$A" gnt-node list --no-headers -o offline "$(node_fqdn "$1")") == N ]]; }
# lease_of VOL EXPR: a Python expression over the volume's lease record L ({} if none).
lease_of() { archip info "$1" --json | jq_ "(lambda L: $2)(d.get('lease') or {})"; }
# wait_lease_expired VOL: until the holder's lease plus the clock skew are past (60 s at most;
# info's JSON gives whole seconds, hence one more).
wait_lease_expired() {
  local left
  left=$(archip info "$1" --json | "$GC_PY" -c "
import json, sys, datetime
d = json.load(sys.stdin); L = d.get('lease') or {}
u = L.get('until')
if not u: print(0); sys.exit()
t = datetime.datetime.fromisoformat(u.replace('Z', '+00:00')).timestamp()
skew = float('${GC_CLOCK_SKEW%s}')
print(max(0.0, min(60.0, t + skew + 1.3 - datetime.datetime.now().timestamp())))")
  sleep "${left:-0}"
}
# held_by VOL NODE: VOL's lock is held by NODE alone.
held_by() { [[ $(lock_of "$1") == "exclusive:$(node_fqdn "$2")" ]]; }
lock_of() { archip info "$1" --json | jq_ '" ".join("%s:%s" % ((d.get("lock") or {}).get("mode"), h["node"]) for h in (d.get("lock") or {}).get("holders", []))'; }
gnt gnt-instance list --no-headers -o name | grep -qx "$I" && gnt gnt-instance remove -f "$I" >/dev/null 2>&1

# --- an instance running on B ------------------------------------------------------------
run "gnt-instance add on $A" gnt gnt-instance add -t ext --disk 0:size=1G,provider=archipelago,origin=snapshot:img-v1 \
  -o "$GC_OS_NAME" -H fake -n "$(node_fqdn "$A")" "$I"
V=$(gnt gnt-instance info --static "$I" | sed -n "s/.*logical_id: \['archipelago', '\(.*\)'\]/\1/p" | head -n1)
run "gnt-instance migrate -f to $B" gnt gnt-instance migrate -f "$I"
check "primary node is $(node_fqdn "$B")" primary_is "$B"

# --- grow, disk add, snapshots while it runs on B -------------------------------------------
start_writer "$B" b1 ""
wait_acks b1 20
mark grow; t=$(now)
run "gnt-instance grow-disk 0 1G (running on $B)" gnt gnt-instance grow-disk "$I" 0 1G
note "grow-disk: $(secs "$t" "$(now)") s"
size_is_2g() { [[ $(archip info "$V" --json | jq_ 'd["size"]') == 2147483648 ]]; }
check "the volume is 2 GiB in the store" size_is_2g
check "B's loop device sees 2 GiB without a reattach" bash -c "[[ \$(blockdev --getsize64 \$(cat '$DB/dev.$V')) == 2147483648 ]]"
check "Ganeti called grow on $B (VOL_SIZE=1024 VOL_NEW_SIZE=2048)" called "$B" grow "grow $V excl=- size=1024 new=2048"
mark add; t=$(now)
run "gnt-instance modify --disk add:size=512M,name=snf-vol-7 (running on $B)" \
  gnt gnt-instance modify --disk add:size=512M,provider=archipelago,name=snf-vol-7 "$I"
note "disk add: $(secs "$t" "$(now)") s"
V1=$(gnt gnt-instance info --static "$I" | sed -n "s/.*logical_id: \['archipelago', '\(.*\.ext\.disk1\)'\]/\1/p" | head -n1)
check "the new disk ($V1) was created and opened on $B" order_ok add "$B create $V1" "$B open $V1 excl=True"
check "the new disk is held by $(node_fqdn "$B")" bash -c "[[ \"\$1\" == 'exclusive:$(node_fqdn "$B")' ]]" _ "$(lock_of "$V1")"
# gnt-backup export: Ganeti snapshots on B through the provider, then streams.
mark export; t=$(now)
gnt gnt-backup export --noshutdown -n "$(node_fqdn "$B")" "$I" > "$W/export.log" 2>&1; rc=$?
note "gnt-backup export --noshutdown: exit $rc in $(secs "$t" "$(now)") s"
check "Ganeti called snapshot on $B for disk 0" called "$B" export "snapshot $V"
no_export_snapshot() { ! archip list | grep -q '\.snap '; }
check "the export's snapshots were removed" no_export_snapshot
if ((rc != 0)) && grep -q 'commonName does not match' "$W/export.log"; then
  note "gnt-backup export fails in Ganeti $GC_GANETI_VERSION (socat: the cluster certificate's commonName is not the node name impexpd now expects; Ganeti's bug, not the provider's): $(grep -m1 -o 'socat: E .*' "$W/export.log")"
elif ((rc != 0)); then
  bad "gnt-backup export failed: $(tail -n 2 "$W/export.log" | tr '\n' ' ')"
else
  ok "gnt-backup export"
fi
gnt gnt-backup remove "$I" >/dev/null 2>&1
# The provider's snapshot through the holder, with the guest writing.
before=$(last_seq b1)
t=$(now)
run "archip snapshot on $B (the holder) while the guest writes" archip_on "$B" snapshot "$V" "$V-snap1"
note "snapshot through $B's daemon: $(secs "$t" "$(now)") s"
head -n $((before + 1)) "$W/b1.ack" > "$W/b1-before-snap.ack"
read_snap1() { archip read "$V-snap1" --length $(( (16 << 20) + (before + 1) * 4096 )) > "$W/snap1.raw"; }
run "the controller reads the snapshot from the store" read_snap1
check "the snapshot holds every write acknowledged before it was asked for" "$GC_PY" "$GIO" check "$W/snap1.raw" "$W/b1-before-snap.ack"
rm -f "$W/snap1.raw"
out=$(archip_on "$C" snapshot "$V" "$V-snap2" 2>&1); rc=$?
if ((rc == 0)); then ok "the controller ($C) snapshots the volume held by $B"
else gap "a snapshot asked from the controller ($C) while $B holds the volume is refused, not delegated to $B: $out"; fi

# --- node B dies in the middle of writes ------------------------------------------------------
wait_acks b1 $(( $(wc -l < "$W/b1.ack") + 20 ))
pids=$(node_pids "$B")
t_kill=$(now)
kill -KILL $pids
# Right away, B's lease is still running: the operator's break is refused.
out=$(archip_on "$A" unlock --force "$V" 2>&1); rc=$?
check "unlock --force on $A is refused while $B's lease runs, in one line naming $B and the lease's end" \
  bash -c "(( $rc != 0 )) && [[ \$(wc -l <<<\"\$1\") == 1 ]] && grep -q 'node $(node_fqdn "$B") .*holds a live lease until .*--ignore-lease' <<<\"\$1\"" _ "$out"
note "unlock --force: $out"
for _ in $(seq 50); do [[ -z $(node_pids "$B") ]] && break; sleep 0.1; done
check "every process of $B's namespaces is gone (SIGKILL)" test -z "$(node_pids "$B")"
check "the guest was writing when $B died (its writer did not stop cleanly)" bash -c "! grep -q stopped '$W/b1.err'"
acked=$(wc -l < "$W/b1.ack")
note "killed $(echo $pids | wc -w) processes of $B ($(echo $pids)); the guest had $acked writes acknowledged"
check "the dead daemon's lock is still recorded (exclusive, $(node_fqdn "$B"))" bash -c "[[ \"\$1\" == 'exclusive:$(node_fqdn "$B")' ]]" _ "$(lock_of "$V")"
out=$(failover_ignoring_consistency 2>&1); rc=$?
check "failover --ignore-consistency refuses while $B is not marked offline" bash -c "(( $rc != 0 ))"
note "Ganeti: $(tail -n 1 <<<"$out" | head -c 300)"
t=$(now)
run "gnt-node modify --offline yes $(node_fqdn "$B")" gnt gnt-node modify -O yes "$(node_fqdn "$B")"
note "marking $B offline: $(secs "$t" "$(now)") s"
epoch0=$(lease_of "$V" 'L.get("epoch")')
t=$(now)
wait_lease_expired "$V"; wait_lease_expired "$V1"
note "waited $(secs "$t" "$(now)") s more for $B's leases to run out (lease $GC_LEASE + clock skew $GC_CLOCK_SKEW after its last renewal)"
t_start=$(now)
rm -f "$GO"
start_writer "$A" a1 "b1"
mark death; t=$(now)
out=$(failover_ignoring_consistency 2>&1); rc=$?
T_FO1=$(secs "$t" "$(now)")
echo "$out" > "$W/failover-1.log"
record_calls death
check "failover --ignore-consistency to $A gets the disks once $B's lease expired (exit $rc)" bash -c "(( $rc == 0 ))"
check "$A's open broke $B's expired lock, logged by $A's daemon" \
  grep -q "$V: $(node_fqdn "$A") broke $(node_fqdn "$B")'s exclusive lock (token .*, lease expired at .*) at .*; epoch" "$DA/serve.log"
check "the break is in the Ganeti log of $A's open call (the provider's stderr)" \
  grep -rq "$V: $(node_fqdn "$A") broke $(node_fqdn "$B")'s exclusive lock" "$DA/log-ganeti/extstorage/"
epoch1=$(lease_of "$V" 'L.get("epoch")')
check "the break is recorded in the store (lease: last break $(node_fqdn "$B") by $(node_fqdn "$A"), reason expired)" \
  bash -c "[[ \"\$1\" == '$(node_fqdn "$B") $(node_fqdn "$A") expired' ]]" _ \
  "$(lease_of "$V" '" ".join([L["lastBreak"]["broken"]["node"], L["lastBreak"]["by"]["node"], L["lastBreak"]["reason"]])')"
check "the epoch moved on ($epoch0 -> $epoch1)" bash -c "(( ${epoch1:-0} > ${epoch0:-0} ))"
note "failover: exit $rc in $T_FO1 s; primary is now $(gnt gnt-instance list --no-headers -o pnode "$I"), status $(gnt gnt-instance list --no-headers -o status "$I")"
T_START=$T_FO1
check "the volume is held exclusively by $(node_fqdn "$A") alone" holder_is "$A"
check "every write $B had acknowledged before it died reads back on $A" gio_check "$A" b1
check "the writes on $A read back" gio_check "$A" a1
T_DEATH=$(awk -v a="$t_kill" -v b="$(head -n1 "$W/a1.ack" | cut -d' ' -f2)" 'BEGIN{printf "%.2f", b-a}')

# --- B comes back ------------------------------------------------------------------------------
before=$(cat "$DB/serve.log" | wc -l)
start_serve "$B"
check "$B's restarted daemon recovered its dead devices" bash -c "tail -n +$((before + 1)) '$DB/serve.log' | grep -q 'recovery: detached'"
check "$B's recovery left $(node_fqdn "$A")'s hold alone" holder_is "$A"
check "$B's recovery left $A's devices alone (the guest still writes)" bash -c "n=\$(wc -l < '$W/a1.ack'); sleep 1; [[ \$(wc -l < '$W/a1.ack') -gt \$n ]]"
grep -q "recovery: .*is locked by node $(node_fqdn "$A")" "$DB/serve.log" && note "$B's recovery: $(grep -m1 -o "recovery: $V: .*" "$DB/serve.log" | head -c 300)"
# B's VMs died with it (a reboot): the fake hypervisor's record of them goes.
rm -f "$DB"/run-ganeti/fake-hypervisor/*
nx "$B" /usr/sbin/sshd -f /etc/ssh/sshd_config
t=$(now)
run "gnt-node add --readd $(node_fqdn "$B") (B back in the cluster)" gnt gnt-node add --readd --no-ssh-key-check "$(node_fqdn "$B")"
note "readd of $B: $(secs "$t" "$(now)") s"
check "$B is online again" node_online "$B"

# --- B cut off, not dead: paused while its guest writes -------------------------------------------
VC=cutoff-$$
run "archip create $VC (for the cut-off case)" archip create "$VC" --size 64M
devb=$(archip_on "$B" attach "$VC" | head -n1)
check "$B attached $VC ($devb)" test -n "$devb"
echo "$devb" > "$W/dev.cutb"
nx "$B" setsid -f /bin/sh -c 'echo $$ > "$1"; shift; exec "$@" 2>"$0"' \
  "$W/cutb.err" "$W/cutb.pid" "$GC_PY" "$GIO" write cutb "$W/dev.cutb" "$W/cutb.ack" "$W/cutb.wpid"
wait_acks cutb 20
pb=$(serve_pid "$B")
kill -STOP "$pb"; t_stop=$(now)
sleep 0.5
stopped_at=$(wc -l < "$W/cutb.ack")
note "paused $B's daemon (pid $pb, SIGSTOP) after $stopped_at acknowledged guest writes"
out=$(archip_on "$A" attach "$VC" 2>&1); rc=$?
check "$A's attach is refused while the paused $B's lease runs" bash -c "(( $rc != 0 )) && grep -q 'lease ends at' <<<\"\$1\"" _ "$out"
wait_lease_expired "$VC"
deva=$(archip_on "$A" attach "$VC" | head -n1); T_CUT=$(secs "$t_stop" "$(now)")
check "$A takes $VC over once $B's lease expired ($T_CUT s after the pause)" test -n "$deva"
check "$A's daemon logged the break of $B's hold of $VC" grep -q "$VC: $(node_fqdn "$A") broke $(node_fqdn "$B")'s exclusive lock" "$DA/serve.log"
echo "$deva" > "$W/dev.cuta"
# A's records start past B's, leaving room for the write B had in flight.
nx "$A" setsid -f /bin/sh -c 'echo $$ > "$1"; shift; exec "$@" 2>"$0"' \
  "$W/cuta.err" "$W/cuta.pid" "$GC_PY" "$GIO" write cuta "$W/dev.cuta" "$W/cuta.ack" "$W/cuta.wpid" --start $((stopped_at + 8))
wait_acks cuta 20
kill -CONT "$pb"
sleep 2
wait_acks cuta $(( $(wc -l < "$W/cuta.ack") + 20 ))
# Its lease check, or on RADOS the cluster's blocklist (whichever a write meets first).
fenced_logged() {
  local _; for _ in $(seq 50); do
    grep -Eq "$VC: .*(node $(node_fqdn "$B") \(epoch [0-9]+\) is fenced|fenced off \(blocklisted\))" "$DB/serve.log" && return 0; sleep 0.1
  done; return 1
}
check "$B's daemon, resumed, logs that it is fenced" fenced_logged
# The write in flight at the pause may be acknowledged at the resume if it
# reached the store before the pause (then it reads back below); no other.
check "at most the write in flight at the pause was acknowledged on $B after it ($stopped_at, now $(wc -l < "$W/cutb.ack"))" \
  bash -c "(( \$(wc -l < '$W/cutb.ack') <= $stopped_at + 1 ))"
check "$B's guest got an I/O error" grep -q "Input/output error" "$W/cutb.err"
kill -TERM "$(cat "$W/cuta.pid")" 2>/dev/null; sleep 0.3
check "everything read back on $A is what was acknowledged: $B's writes before the pause, $A's after (nothing of $B's late writes landed)" \
  nx "$A" "$GC_PY" "$GIO" check "$deva" "$W/cutb.ack" "$W/cuta.ack"
check "$VC is held by $(node_fqdn "$A") alone" held_by "$VC" "$A"
kill -TERM "$(cat "$W/cutb.pid")" 2>/dev/null
out=$(archip_on "$B" detach "$VC" 2>&1); note "detach on the fenced $B: exit $? $(head -c 200 <<<"$out")"
check "$B's detach left $(node_fqdn "$A")'s hold of $VC alone" held_by "$VC" "$A"
run "detach $VC on $A" archip_on "$A" detach "$VC"
check "archip verify $VC is clean" archip verify "$VC"
archip remove "$VC" >/dev/null 2>&1
# The fenced daemon serves other volumes again by itself: on RADOS it takes a
# new client once it sees its old one blocklisted (the volumes fenced with it
# stay fenced until detached); on a folder store only the broken volume was
# fenced.
run "archip create $VC-new" archip create "$VC-new" --size 16M
devn=$(archip_on "$B" attach "$VC-new" 2>"$W/attach-new.err" | head -n1)
check "$B's fenced daemon attaches another volume without a restart (same pid $pb): ${devn:-$(head -c 200 "$W/attach-new.err")}" \
  bash -c "kill -0 $pb && [[ '$devn' == /dev/loop* ]]"
run "detach $VC-new on $B" archip_on "$B" detach "$VC-new"
archip remove "$VC-new" >/dev/null 2>&1
# Then it is restarted, as its operator (or systemd) would: the new daemon
# recovers without touching what A holds.
kill -KILL "$pb" 2>/dev/null
for _ in $(seq 50); do kill -0 "$pb" 2>/dev/null || break; sleep 0.1; done
check "$B's daemon, restarted after the fencing, serves again" start_serve "$B"

log "TIMES: node death to the first write on $A: $T_DEATH s (failover after the lease ran out $T_FO1 s); cut-off: pause to $A's takeover $T_CUT s"
if [[ ${GC_KEEP:-no} != yes ]]; then
  run "gnt-instance remove" gnt gnt-instance remove -f "$I"
  archip remove "$V-snap1" >/dev/null 2>&1; archip remove "$V-snap2" >/dev/null 2>&1
  no_disk_left() { ! archip list | grep -q '\.ext\.disk'; }
  check "no volume of the instance is left in the store" no_disk_left
fi
cleanup_writers
log "$gaps gaps (GAP lines: what issue 17 still needs)"
if [[ $failed == 0 && ${GC_KEEP:-no} != yes ]]; then rm -rf "$W"; else log "logs kept in $W"; fi
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
