# shellcheck shell=bash disable=SC2034
# Shared settings and helpers of the multi-node Ganeti lab (sourced, not run).
# Every setting can be overridden from the environment as GC_*.
#
# Layout: one network namespace per node (gntc-a, gntc-b, ...) whose eth0 is a
# veth into a "switch" namespace (gntc-sw, bridge gntcsw0); in each node the
# port-less-looking bridge gntcbr0 holds eth0 and the node's address (Ganeti's
# master netdev and the instances' NIC link). Each node also has a persistent
# mount and UTS namespace (bound onto files under $GC_ROOT/ns) in which its own
# folders are bind-mounted over /var/lib/ganeti, /run/ganeti, /var/log/ganeti,
# /run/lock, /run/archip, /etc/hosts, /etc/ssh, /etc/ganeti, /etc/default/ganeti, /srv/ganeti and
# /root: nothing of the host's Ganeti, ssh or hosts file is read or written.
# The store ($GC_ROOT/store) is one host folder every node sees at the same
# path, as an NFS mount would be.

GC_ROOT=${GC_ROOT:-/var/tmp/gnt-cluster}
GC_NODES=${GC_NODES:-a b}            # Ganeti nodes; the first is the master
GC_CTRL=${GC_CTRL:-c}                # a controller namespace (no Ganeti, attaches nothing); "" for none
GC_SWITCH=${GC_SWITCH:-gntc-sw}
GC_SWBR=${GC_SWBR:-gntcsw0}
GC_BR=${GC_BR:-gntcbr0}
GC_NET=${GC_NET:-198.18.78}
GC_NETMASK=24
GC_MASTER_IP=${GC_MASTER_IP:-$GC_NET.254}
GC_DOMAIN=${GC_DOMAIN:-cluster.test}
GC_CLUSTER=${GC_CLUSTER:-gntc.$GC_DOMAIN}
GC_OS_NAME=noop
GC_PY=/usr/bin/python3
GC_CLEAN_PATH=/usr/sbin:/usr/bin:/sbin:/bin
GC_LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GC_REPO=$(cd "$GC_LAB_DIR/../../.." && pwd)
GC_ARCHIP_BIN=${GC_ARCHIP_BIN:-$GC_REPO/.build/debug}
GC_GANETI_VERSION=${GC_GANETI_VERSION:-3.1}
# The shared store (GC_BACKEND): "dir", a folder every node sees at the same
# path (as an NFS mount would be), or "rados", a pool of a one-node Ceph
# (tests/e2e/ceph/ceph-up.sh) that listens on the switch bridge at
# $GC_CEPH_IP, run in the switch namespace (the lab's storage network), its
# state in $GC_ROOT/ceph. Each node's archip reaches it over its eth0.
GC_BACKEND=${GC_BACKEND:-dir}
GC_CEPH_IP=${GC_CEPH_IP:-$GC_NET.250}
GC_CEPH_DIR=$GC_ROOT/ceph
case $GC_BACKEND in
  dir) GC_STORE=${GC_STORE:-$GC_ROOT/store};;
  rados) GC_STORE=${GC_STORE:-"rados://archip?conf=$GC_CEPH_DIR/ceph.conf&id=admin&ns=lab"};;
  *) echo "GC_BACKEND must be dir or rados, not '$GC_BACKEND'" >&2; exit 2;;
esac
GC_LEASE=${GC_LEASE:-6s}              # [locks] lease of every node (archip.conf)
GC_CLOCK_SKEW=${GC_CLOCK_SKEW:-1s}    # [locks] clock_skew

gc_t0=${gc_t0:-$(date +%s.%N)}
elapsed() { awk -v a="$gc_t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log() { printf '[%6ss] %s\n' "$(elapsed)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }

# Re-exec the calling script under a clean environment (daemons and providers
# inherit it), keeping GC_* settings.  Call with "$0" "$@".
gc_clean_env() {
  [[ ${GC__CLEAN:-} == 1 ]] && return 0
  local keep=() v
  for v in $(compgen -e); do [[ $v == GC_* ]] && keep+=("$v=${!v}"); done
  exec env -i PATH=$GC_CLEAN_PATH HOME=/root LANG=C.UTF-8 GC__CLEAN=1 \
    gc_t0="$gc_t0" "${keep[@]}" /bin/bash "$@"
}
gc_usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$1"; }
need_root() { [[ $(id -u) == 0 ]] || die "run as root"; }

# Per node: index (1-based), address, names, folder, namespace files.
node_index() { local i=1 n; for n in $GC_NODES $GC_CTRL; do [[ $n == "$1" ]] && { echo $i; return; }; i=$((i + 1)); done; return 1; }
node_ip() { echo "$GC_NET.$(node_index "$1")"; }
node_short() { echo "node-$1"; }
node_fqdn() { echo "node-$1.$GC_DOMAIN"; }
node_dir() { echo "$GC_ROOT/nodes/$1"; }
# The node daemon's runtime dir, inside the node's own /run/archip. Not
# /run/archip itself: the daemon's recovery finds its old loop devices by
# their backing file's path, and every node shares this kernel's loop devices,
# so the same path on two nodes let one node's recovery detach the other's
# devices (seen: node b's restart detached node a's /dev/loop5).
# GC_SHARED_RUNDIR=yes brings that layout back (to see nodedeath.sh catch it).
node_rundir() { if [[ ${GC_SHARED_RUNDIR:-no} == yes ]]; then echo /run/archip; else echo "/run/archip/$(node_short "$1")"; fi; }
node_netns() { echo "gntc-$1"; }
master() { set -- $GC_NODES; echo "$1"; }
netns_exists() { [[ -e /run/netns/$1 ]]; }
# A node's namespaces exist when its mount namespace file is an nsfs mount.
node_ns_up() { netns_exists "$(node_netns "$1")" && grep -q " $GC_ROOT/ns/$1.mnt " /proc/self/mountinfo; }

# Run a command in node $1's network, mount and UTS namespaces, clean env.
nx() {
  local n=$1; shift
  (cd / && nsenter --net="/run/netns/$(node_netns "$n")" --mount="$GC_ROOT/ns/$n.mnt" \
    --uts="$GC_ROOT/ns/$n.uts" -- env -i PATH=$GC_CLEAN_PATH HOME=/root LANG=C.UTF-8 "$@")
}
# Pids living in node $1's network namespace.
node_pids() { ip netns pids "$(node_netns "$1")" 2>/dev/null || true; }

# The node daemon of node $1 (its pid file is on the host side of its folder).
serve_pid() { local p; p=$(cat "$(node_dir "$1")/serve.pid" 2>/dev/null) || return 1; kill -0 "$p" 2>/dev/null && echo "$p"; }
start_serve() {
  local n=$1 d; d=$(node_dir "$1")
  serve_pid "$n" >/dev/null && return 0
  rm -f "$d/serve.pid"
  nx "$n" setsid -f /bin/sh -c 'echo $$ > "$1"; exec "$2" serve --config "$3" >>"$4" 2>&1 </dev/null' \
    sh "$d/serve.pid" "$GC_ARCHIP_BIN/archip" "$d/archip.conf" "$d/serve.log"
  # Serving once it logged so (after its recovery).
  local _; for _ in $(seq 100); do
    nx "$n" test -S "$(node_rundir "$n")/control.sock" && tail -n 1 "$d/serve.log" | grep -q ': serving node ' && return 0
    sleep 0.1
  done
  log "WARNING: node $n: archip serve has no control socket after 10 s"; return 1
}
stop_serve() {
  local n=$1 p _; p=$(serve_pid "$n") || return 0
  kill -TERM "$p" 2>/dev/null
  for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  log "WARNING: node $n: archip serve ($p) ignored SIGTERM for 15 s: SIGKILL"; kill -KILL "$p" 2>/dev/null; return 1
}

# archip on the shared store from the lab's side of it: the host (dir), or the
# switch namespace, where the lab's Ceph listens (rados).
gc_archip() {
  if [[ $GC_BACKEND == rados ]]; then
    ip netns exec "$GC_SWITCH" "$GC_ARCHIP_BIN/archip" --store "$GC_STORE" "$@"
  else
    "$GC_ARCHIP_BIN/archip" --store "$GC_STORE" "$@"
  fi
}
# The lab's Ceph (rados): up (idempotent) in the switch namespace, or down.
gc_ceph() {
  ip netns exec "$GC_SWITCH" env CEPH_DIR="$GC_CEPH_DIR" CEPH_ADDR="$GC_CEPH_IP" \
    CEPH_OSD_BYTES="${GC_CEPH_BYTES:-4294967296}" "$GC_REPO/tests/e2e/ceph/ceph-up.sh" "$@"
}
