# shellcheck shell=bash disable=SC2034
# Shared settings and helpers for the Ganeti lab scripts (sourced, not run).
# Every setting can be overridden from the environment as GNT_*.

GNT_NETNS=${GNT_NETNS:-ganeti}
GNT_BRIDGE=${GNT_BRIDGE:-gntlab0}
GNT_NODE_IP=${GNT_NODE_IP:-198.18.77.1}
GNT_NETMASK=${GNT_NETMASK:-24}
GNT_SUBNET=${GNT_SUBNET:-198.18.77.0/24}
GNT_MASTER_IP=${GNT_MASTER_IP:-198.18.77.254}
# The node's secondary (replication) address, which intra-cluster disk
# transfers (gnt-backup export, import) use. Ganeti 3.1.0~rc2's impexpd checks
# the peer's certificate against the reverse name of that address, while the
# node certificate (server.pem) it presents has the fixed CN ganeti.example.com
# (upstream ganeti#1839): /etc/hosts names the secondary address after that CN.
GNT_SECONDARY_IP=${GNT_SECONDARY_IP:-198.18.77.2}
GNT_CERT_CN=${GNT_CERT_CN:-ganeti.example.com}
GNT_DOMAIN=${GNT_DOMAIN:-ganeti.test}
GNT_HOSTNAME=${GNT_HOSTNAME:-$(hostname)}
GNT_NODE_NAME=${GNT_NODE_NAME:-$GNT_HOSTNAME.$GNT_DOMAIN}
GNT_CLUSTER_NAME=${GNT_CLUSTER_NAME:-cluster.$GNT_DOMAIN}
GNT_OS_NAME=${GNT_OS_NAME:-noop}
GNT_OS_DIR=${GNT_OS_DIR:-/srv/ganeti/os}
GNT_ES_DIR=${GNT_ES_DIR:-/srv/ganeti/extstorage}
GNT_RAPI_USER=${GNT_RAPI_USER:-lab}
GNT_RAPI_PASS=${GNT_RAPI_PASS:-lab-secret}
GNT_RAPI_PORT=${GNT_RAPI_PORT:-5080}
GNT_STATE_DIR=${GNT_STATE_DIR:-/var/lib/gnt-lab}
GNT_HOSTS_FILE=${GNT_HOSTS_FILE:-/etc/hosts}
GNT_APT=${GNT_APT:-yes}                  # install missing packages with apt-get
GNT_PACKAGES=${GNT_PACKAGES:-ganeti curl iproute2 util-linux}
GNT_BLACKHOLE=${GNT_BLACKHOLE:-yes}      # main-netns blackhole route for GNT_SUBNET
GNT_PROVIDER_INSTALL=${GNT_PROVIDER_INSTALL:-link}   # link | copy
GNT_PY=${GNT_PY:-/usr/bin/python3}
GNT_CLEAN_PATH=/usr/sbin:/usr/bin:/sbin:/bin

GNT_LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Marker lines around what we add to /etc/hosts.
GNT_HOSTS_BEGIN="# BEGIN gnt-lab (tests/e2e/ganeti; removed by cluster-down.sh)"
GNT_HOSTS_END="# END gnt-lab"

gnt_t0=${gnt_t0:-$(date +%s.%N)}

elapsed() { awk -v a="$gnt_t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log() { printf '[%6ss] %s\n' "$(elapsed)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Re-exec the calling script under a clean environment (daemons and providers
# inherit it), keeping GNT_* settings.  Call with "$0" "$@".
gnt_clean_env() {
  [[ ${GNT__CLEAN:-} == 1 ]] && return 0
  local keep=() v
  for v in $(compgen -e); do
    [[ $v == GNT_* ]] && keep+=("$v=${!v}")
  done
  exec env -i PATH=$GNT_CLEAN_PATH HOME=/root LANG=C.UTF-8 GNT__CLEAN=1 \
    gnt_t0="$gnt_t0" "${keep[@]}" /bin/bash "$@"
}

# Print the comment block at the top of a script (its usage).
gnt_usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$1"; }

need_root() { [[ $(id -u) == 0 ]] || die "run as root"; }

# Run a command inside the lab namespace, with the clean environment.
nsx() {
  ip netns exec "$GNT_NETNS" env -i PATH=$GNT_CLEAN_PATH HOME=/root LANG=C.UTF-8 "$@"
}

netns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$GNT_NETNS"; }

cluster_configured() { [[ -s /var/lib/ganeti/config.data ]]; }

# Pids of Ganeti daemons according to their pid files.
ganeti_daemon_pids() {
  local f pid
  for f in /var/run/ganeti/*.pid; do
    [[ -e $f ]] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    [[ $pid =~ ^[0-9]+$ ]] || continue
    # Only a live process that really is this daemon (pids get reused).
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "$(basename "$f" .pid)" &&
      echo "$pid $(basename "$f" .pid)"
  done
}

# Netns name of a pid ("" for the main one).
pid_netns() { ip netns identify "$1" 2>/dev/null || true; }
