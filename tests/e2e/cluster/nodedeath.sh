#!/bin/bash
# On the lab of up.sh (folder store), run by Ganeti: an instance live-migrated
# to node B (not the master) gets a grow, a disk add and snapshots while it
# runs there (gnt-backup export, and the provider's snapshot through B; the
# same snapshot asked from the controller namespace); then node B dies:
# SIGKILL of every process of B's namespaces (its archip serve, Ganeti's
# daemons, sshd, the guest writer) in the middle of writes, B marked offline,
# failover --ignore-consistency to A; what the store does with the dead
# holder's lock; B's daemon restarted (recovery) while A holds the volume.
# Today's gaps (no fencing, silent lock break, snapshot not delegated) are
# printed as "GAP -" lines and do not fail the run; checks do.
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
check "the volume is 2 GiB in the store" bash -c "[[ \$('$GC_ARCHIP_BIN/archip' --store '$GC_STORE' info '$V' --json | $GC_PY -c 'import json,sys; print(json.load(sys.stdin)[\"size\"])') == 2147483648 ]]"
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
check "the export's snapshots were removed" bash -c "! '$GC_ARCHIP_BIN/archip' --store '$GC_STORE' list | grep -q '\\.snap '"
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
run "the controller reads the snapshot from the store" bash -c "'$GC_ARCHIP_BIN/archip' --store '$GC_STORE' read '$V-snap1' --length $(( (16 << 20) + (before + 1) * 4096 )) > '$W/snap1.raw'"
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
mark death; t=$(now)
out=$(failover_ignoring_consistency 2>&1); rc=$?
T_FO1=$(secs "$t" "$(now)")
echo "$out" > "$W/failover-1.log"
record_calls death
check "failover --ignore-consistency does not get the disks while the dead node's lock stands" bash -c "(( $rc != 0 ))"
check "A's open was refused, naming the dead holder and the way to break it" \
  grep -q "is locked (exclusive) by node $(node_fqdn "$B").*archip unlock --force" "$W/failover-1.log"
check "the lock was not broken silently (still $(node_fqdn "$B"))" bash -c "[[ \"\$1\" == 'exclusive:$(node_fqdn "$B")' ]]" _ "$(lock_of "$V")"
note "failover attempt: exit $rc in $T_FO1 s; primary is now $(gnt gnt-instance list --no-headers -o pnode "$I"), status $(gnt gnt-instance list --no-headers -o status "$I")"
epoch0=$(archip info "$V" --json | jq_ 'd.get("epoch")')
t=$(now)
run "archip unlock --force on $A (disk 0)" archip_on "$A" unlock --force "$V"
run "archip unlock --force on $A (disk 1)" archip_on "$A" unlock --force "$V1"
out=$(cat "$W"/*unlock_--force*.log)
epoch1=$(archip info "$V" --json | jq_ 'd.get("epoch")')
[[ -n $out ]] || gap "archip unlock --force breaks a dead node's lock without a word: no output, nothing in the store's or any daemon's log names who broke whose lock (epoch $epoch0 -> $epoch1)"
[[ $epoch0 != "$epoch1" ]] || gap "breaking the lock does not change the volume's epoch: nothing would let the store refuse a write from the old holder (no fencing on the folder backend)"
t_start=$(now)
rm -f "$GO"
start_writer "$A" a1 "b1"
run "gnt-instance startup on $A" gnt gnt-instance startup "$I"
T_START=$(secs "$t_start" "$(now)")
wait_acks a1 20
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
gap "nothing stops a node that is only cut off (not dead) from writing after the lock was broken: the folder backend checks no lease or epoch on object writes (only here, on one kernel, does the dead FUSE session stop B's late writes)"
# B's VMs died with it (a reboot): the fake hypervisor's record of them goes.
rm -f "$DB"/run-ganeti/fake-hypervisor/*
nx "$B" /usr/sbin/sshd -f /etc/ssh/sshd_config
t=$(now)
run "gnt-node add --readd $(node_fqdn "$B") (B back in the cluster)" gnt gnt-node add --readd --no-ssh-key-check "$(node_fqdn "$B")"
note "readd of $B: $(secs "$t" "$(now)") s"
check "$B is online again" node_online "$B"

log "TIMES: node death to the first write on $A: $T_DEATH s (failover attempt $T_FO1 s, startup after the break $T_START s; the steps are an operator's)"
if [[ ${GC_KEEP:-no} != yes ]]; then
  run "gnt-instance remove" gnt gnt-instance remove -f "$I"
  archip remove "$V-snap1" >/dev/null 2>&1; archip remove "$V-snap2" >/dev/null 2>&1
  check "no volume of the instance is left in the store" bash -c "! '$GC_ARCHIP_BIN/archip' --store '$GC_STORE' list | grep -q '\\.ext\\.disk'"
fi
cleanup_writers
log "$gaps gaps (GAP lines: what issue 17 still needs)"
if [[ $failed == 0 && ${GC_KEEP:-no} != yes ]]; then rm -rf "$W"; else log "logs kept in $W"; fi
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
