#!/bin/bash
# Tear down the lab cluster made by cluster-up.sh.  Root, idempotent.
#   removes instances and exports, gnt-cluster destroy, stops every daemon
#   (and kills whatever `ip netns pids $GNT_NETNS` still lists), deletes the
#   bridge and the netns, restores /etc/hosts byte for byte, removes the noop
#   OS, the provider links cluster-up.sh made and the test provider's volumes.
# The packages stay installed.  Settings: GNT_* (see lib.sh).
#   GNT_KEEP_TESTPROV=yes  keep /var/tmp/gnt-testprov (volumes, calls.log)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
case ${1:-} in -h|--help) gnt_usage "$0"; exit 0;; esac
gnt_clean_env "$0" "$@"
need_root
GNT_KEEP_TESTPROV=${GNT_KEEP_TESTPROV:-no}
rc=0
cd /

# --- 1. cluster (needs the netns: rebuild it if it is gone, e.g. reboot) -----
if cluster_configured; then
  if ! netns_exists; then
    log "netns $GNT_NETNS missing: rebuilding it to destroy the cluster"
    # Daemons still running would sit in the lost namespace: stop them first.
    while read -r pid name; do
      [[ -n $pid ]] || continue
      log "stopping $name ($pid) left in a deleted netns"; kill "$pid" 2>/dev/null || true
    done < <(ganeti_daemon_pids)
    for _ in $(seq 1 50); do [[ -z $(ganeti_daemon_pids) ]] && break; sleep 0.1; done
    ip netns add "$GNT_NETNS"
    ip -n "$GNT_NETNS" link set lo up
    ip -n "$GNT_NETNS" link add "$GNT_BRIDGE" type bridge
    ip -n "$GNT_NETNS" link set "$GNT_BRIDGE" up
    ip -n "$GNT_NETNS" addr replace "$GNT_NODE_IP/$GNT_NETMASK" dev "$GNT_BRIDGE"
    ip -n "$GNT_NETNS" addr replace "$GNT_SECONDARY_IP/$GNT_NETMASK" dev "$GNT_BRIDGE"
  fi
  for d in $(/usr/lib/ganeti/daemon-util list-start-daemons); do
    nsx /usr/lib/ganeti/daemon-util check-and-start "$d" || true
  done
  insts=$(nsx gnt-instance list --no-headers -o name 2>/dev/null || true)
  for i in $insts; do
    log "gnt-instance remove $i"
    nsx gnt-instance remove -f "$i" >/dev/null ||
      nsx gnt-instance remove -f --ignore-failures "$i" >/dev/null ||
      { log "ERROR: cannot remove instance $i"; rc=1; }
  done
  for e in /var/lib/ganeti/export/*; do
    [[ -d $e ]] || continue
    log "gnt-backup remove $(basename "$e")"
    nsx gnt-backup remove "$(basename "$e")" >/dev/null 2>&1 || rm -rf "$e"
  done
  log "gnt-cluster destroy"
  if nsx gnt-cluster destroy --yes-do-it >"$GNT_STATE_DIR/destroy.log" 2>&1 ||
     ! cluster_configured; then
    log "cluster destroyed"
  else
    sed 's/^/  /' "$GNT_STATE_DIR/destroy.log" >&2
    log "ERROR: gnt-cluster destroy failed"; rc=1
  fi
fi
rm -f "$GNT_STATE_DIR/destroy.log"

# --- 2. daemons -----------------------------------------------------------------
if netns_exists; then
  nsx /usr/lib/ganeti/daemon-util stop-all >/dev/null 2>&1 || true
fi
# Whatever still runs in the namespace (ganeti-metad, which destroy leaves).
for sig in TERM TERM TERM KILL; do
  pids=$(ip netns pids "$GNT_NETNS" 2>/dev/null || true)
  [[ -n $pids ]] || break
  log "kill -$sig $(echo $pids)"
  kill -"$sig" $pids 2>/dev/null || true
  for _ in $(seq 1 20); do
    pids=$(ip netns pids "$GNT_NETNS" 2>/dev/null || true)
    [[ -n $pids ]] || break
    sleep 0.1
  done
done
# Ganeti daemons elsewhere (an old main-netns layout) still holding pid files.
while read -r pid name; do
  [[ -n $pid ]] || continue
  log "stopping $name ($pid)"
  kill "$pid" 2>/dev/null || true
done < <(ganeti_daemon_pids)

# --- 3. network --------------------------------------------------------------------
if netns_exists; then
  ip netns delete "$GNT_NETNS"
  log "netns $GNT_NETNS deleted"
fi
if ip link show "$GNT_BRIDGE" >/dev/null 2>&1; then   # old main-netns layout
  ip link delete "$GNT_BRIDGE" && log "main-netns bridge $GNT_BRIDGE deleted"
fi
if ip route show | grep -q "^blackhole $GNT_SUBNET"; then
  ip route del blackhole "$GNT_SUBNET"
fi

# --- 4. /etc/hosts ---------------------------------------------------------------
orig="$GNT_STATE_DIR/hosts.orig"
if [[ -e $orig ]]; then
  cmp -s "$orig" "$GNT_HOSTS_FILE" || cat "$orig" > "$GNT_HOSTS_FILE"
  if cmp -s "$orig" "$GNT_HOSTS_FILE"; then
    rm -f "$orig"; log "/etc/hosts restored"
  else
    log "ERROR: could not restore /etc/hosts (original kept in $orig)"; rc=1
  fi
elif grep -qF "$GNT_HOSTS_BEGIN" "$GNT_HOSTS_FILE"; then
  log "ERROR: /etc/hosts has lab lines but no saved original"; rc=1
fi

# --- 5. files cluster-up.sh installed -------------------------------------------
if [[ -e $GNT_STATE_DIR/providers ]]; then
  while read -r p; do
    [[ -n $p ]] && rm -rf "$p" && log "removed provider $p"
  done < "$GNT_STATE_DIR/providers"
  rm -f "$GNT_STATE_DIR/providers"
fi
if [[ -e $GNT_OS_DIR/$GNT_OS_NAME/.gnt-lab ]]; then
  rm -rf "${GNT_OS_DIR:?}/$GNT_OS_NAME"
fi
for d in "$GNT_ES_DIR" "$GNT_OS_DIR" "$(dirname "$GNT_OS_DIR")"; do
  rmdir "$d" 2>/dev/null || true      # only if empty
done
users=/var/lib/ganeti/rapi/users       # destroy leaves it: drop our password
if [[ -f $users ]] && grep -q "^$GNT_RAPI_USER " "$users"; then
  grep -v "^$GNT_RAPI_USER " "$users" > "$users.tmp" || true
  if [[ -s $users.tmp ]]; then mv "$users.tmp" "$users"; else rm -f "$users" "$users.tmp"; fi
fi
tp=/var/tmp/gnt-testprov
if [[ -d $tp/vols ]]; then
  for f in "$tp"/vols/*.img; do
    [[ -e $f ]] || continue
    for d in $(losetup -j "$f" -n -O NAME); do losetup -d "$d" && log "detached $d ($f)"; done
  done
fi
if [[ $GNT_KEEP_TESTPROV != yes ]]; then
  rm -rf "$tp"
  rm -f /var/log/ganeti/extstorage/*-testprov-*.log   # one per provider call
fi
rm -f "$GNT_STATE_DIR/apt.log"
rmdir "$GNT_STATE_DIR" 2>/dev/null || true

if ((rc == 0)); then log "down, took $(elapsed) s"; else log "down with errors, took $(elapsed) s"; fi
exit $rc
