#!/bin/bash
# Tear down the multi-node lab made by up.sh. Root, idempotent.
#   removes the instances (gnt-instance remove), the other nodes (gnt-node
#   remove), the cluster (gnt-cluster destroy) while the namespaces live;
#   stops each node's archip serve (SIGTERM: flush, detach; a killed one is
#   restarted first so it recovers its loop devices and FUSE mounts), kills
#   whatever else runs in the node namespaces, deletes the namespaces, the
#   switch and $GC_ROOT (store included). GC_FAST=yes skips the Ganeti part
#   (the state dies with the folders). Prints how long it took.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
case ${1:-} in -h|--help) gc_usage "$0"; exit 0;; esac
gc_clean_env "$0" "$@"
need_root
rc=0
M=$(master)

# --- 1. Ganeti: instances, nodes, cluster ------------------------------------------
if [[ ${GC_FAST:-no} != yes ]] && node_ns_up "$M" && [[ -s $(node_dir "$M")/lib-ganeti/config.data ]] &&
   [[ -n $(cat "$(node_dir "$M")"/run-ganeti/ganeti-luxid.pid 2>/dev/null) ]]; then
  for n in $GC_NODES; do node_ns_up "$n" && { serve_pid "$n" >/dev/null || start_serve "$n"; }; done
  for i in $(nx "$M" timeout 30 gnt-instance list --no-headers -o name 2>/dev/null); do
    log "gnt-instance remove $i"
    nx "$M" timeout 120 gnt-instance remove -f "$i" >/dev/null 2>&1 ||
      nx "$M" timeout 120 gnt-instance remove -f --ignore-failures "$i" >/dev/null 2>&1 ||
      { log "WARNING: cannot remove instance $i"; }
  done
  for n in $GC_NODES; do
    [[ $n == "$M" ]] && continue
    nx "$M" timeout 60 gnt-node remove "$(node_fqdn "$n")" >/dev/null 2>&1 && log "gnt-node remove $(node_fqdn "$n")"
  done
  if nx "$M" timeout 60 gnt-cluster destroy --yes-do-it >"$GC_ROOT/destroy.log" 2>&1; then
    log "gnt-cluster destroy"
  else
    log "WARNING: gnt-cluster destroy failed (the state goes with the folders): $(tail -1 "$GC_ROOT/destroy.log")"
  fi
fi

# --- 2. processes of every node -----------------------------------------------------
for n in $GC_NODES $GC_CTRL; do
  node_ns_up "$n" || continue
  if [[ -e $(node_dir "$n")/archip.conf ]] && [[ " $GC_NODES " == *" $n "* ]]; then
    # A daemon that died (SIGKILL in a scenario) left loop devices over its
    # FUSE files: a new one recovers them; then SIGTERM detaches everything.
    start_serve "$n" >/dev/null 2>&1
    stop_serve "$n" || rc=1
  fi
  nx "$n" /usr/lib/ganeti/daemon-util stop-all >/dev/null 2>&1 || true
done
for n in $GC_NODES $GC_CTRL; do
  for sig in TERM TERM KILL; do
    pids=$(node_pids "$n"); [[ -n $pids ]] || break
    log "node $n: kill -$sig $(echo $pids)"
    kill -"$sig" $pids 2>/dev/null
    for _ in $(seq 20); do [[ -z $(node_pids "$n") ]] && break; sleep 0.1; done
  done
  [[ -z $(node_pids "$n") ]] || { log "ERROR: node $n: processes left: $(node_pids "$n")"; rc=1; }
done

# The lab's Ceph (GC_BACKEND=rados), once no daemon needs it.
if [[ -d $GC_CEPH_DIR ]]; then
  CEPH_DIR=$GC_CEPH_DIR "$GC_REPO/tests/e2e/ceph/ceph-up.sh" down && log "the lab's Ceph stopped"
fi

# --- 3. namespaces and network ----------------------------------------------------------
for n in $GC_NODES $GC_CTRL; do
  for f in "$GC_ROOT/ns/$n.mnt" "$GC_ROOT/ns/$n.uts"; do
    grep -q " $f " /proc/self/mountinfo && umount "$f"
  done
  ns=$(node_netns "$n")
  netns_exists "$ns" && ip netns delete "$ns"
done
netns_exists "$GC_SWITCH" && ip netns delete "$GC_SWITCH"
grep -q " $GC_ROOT/ns $GC_ROOT/ns " /proc/self/mountinfo && umount "$GC_ROOT/ns"
log "namespaces deleted"

# --- 4. loop devices over the lab's files, folders ----------------------------------------
# Only this lab's: another lab (other GC_NODES) may run beside it.
mine="^($GC_ROOT/|/run/archip/($(for n in $GC_NODES $GC_CTRL; do printf '%s|' "$(node_short "$n")"; done | sed 's/|$//'))/)"
for b in /sys/block/loop*/loop/backing_file; do
  [[ -e $b ]] || continue
  if grep -Eq "$mine" "$b"; then
    dev=/dev/$(basename "$(dirname "$(dirname "$b")")")
    losetup -d "$dev" && log "detached $dev ($(cat "$b" 2>/dev/null))"
  fi
done
if awk -v r="$GC_ROOT" '$5 == r || index($5, r "/") == 1 {f=1} END {exit !f}' /proc/self/mountinfo; then
  log "ERROR: mounts left under $GC_ROOT: $(awk -v r="$GC_ROOT" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo | tr '\n' ' ')"; rc=1
elif [[ -d $GC_ROOT ]]; then
  rm -rf "$GC_ROOT" && log "removed $GC_ROOT"
fi
if ((rc == 0)); then log "down, took $(elapsed) s"; else log "down with errors, took $(elapsed) s"; fi
exit $rc
