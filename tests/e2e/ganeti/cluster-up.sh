#!/bin/bash
# Bring up (or re-check) a single-node Ganeti 3.0 lab cluster with the fake
# hypervisor inside the network namespace $GNT_NETNS.  Root, idempotent.
#
# usage: cluster-up.sh [[NAME=]PROVIDER_DIR ...]
#   Each PROVIDER_DIR is installed as $GNT_ES_DIR/NAME (NAME defaults to the
#   directory's basename): a symlink, or a copy with GNT_PROVIDER_INSTALL=copy.
# Settings: GNT_* (see lib.sh).  Prints how long each step took.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
case ${1:-} in -h|--help) gnt_usage "$0"; exit 0;; esac
gnt_clean_env "$0" "$@"
need_root

mkdir -p "$GNT_STATE_DIR"
chmod 700 "$GNT_STATE_DIR"

# --- 1. packages ------------------------------------------------------------
read -ra pkgs <<<"$GNT_PACKAGES"
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  [[ $GNT_APT == yes ]] || die "missing packages: ${missing[*]} (GNT_APT=no)"
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    log "apt-get update (no package lists yet)"
    apt-get update -q >"$GNT_STATE_DIR/apt.log" 2>&1 || true
  fi
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$GNT_STATE_DIR/apt.log" 2>&1; then
    log "apt-get install failed; apt-get update and retry"
    apt-get update -q >>"$GNT_STATE_DIR/apt.log" 2>&1 || true
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$GNT_STATE_DIR/apt.log" 2>&1 ||
      { tail -20 "$GNT_STATE_DIR/apt.log" >&2; die "apt-get install failed"; }
  fi
  log "packages installed"
fi
[[ -x /usr/lib/ganeti/daemon-util ]] || die "ganeti not installed"

# A Ganeti daemon running outside our netns (e.g. started by the package's
# init script on a machine without policy-rc.d) would own the ports and talk
# from the main namespace: stop it.
while read -r pid name; do
  [[ -n $pid ]] || continue
  if [[ $(pid_netns "$pid") != "$GNT_NETNS" ]]; then
    log "stopping $name ($pid) running outside netns $GNT_NETNS"
    kill "$pid" 2>/dev/null || true
  fi
done < <(ganeti_daemon_pids)

# --- 2. network namespace, bridge, addresses ---------------------------------
if ip -o addr show 2>/dev/null | grep -q " $GNT_NODE_IP/"; then
  die "$GNT_NODE_IP is configured in the main netns (old layout?): run cluster-down.sh"
fi
if ! netns_exists; then
  ip netns add "$GNT_NETNS"
  log "netns $GNT_NETNS created"
fi
ip -n "$GNT_NETNS" link set lo up
if ! ip -n "$GNT_NETNS" link show "$GNT_BRIDGE" >/dev/null 2>&1; then
  # A port-less bridge: no veth, no route out of the namespace.
  ip -n "$GNT_NETNS" link add "$GNT_BRIDGE" type bridge
fi
ip -n "$GNT_NETNS" link set "$GNT_BRIDGE" up
ip -n "$GNT_NETNS" addr replace "$GNT_NODE_IP/$GNT_NETMASK" dev "$GNT_BRIDGE"
ip -n "$GNT_NETNS" addr replace "$GNT_SECONDARY_IP/$GNT_NETMASK" dev "$GNT_BRIDGE"
if [[ -n $(ip -n "$GNT_NETNS" route show default) ]]; then
  die "netns $GNT_NETNS has a default route; refusing (traffic must stay inside)"
fi
# Safety net in the main netns: lab addresses (which /etc/hosts now names)
# never leave through eth0 if a tool is run outside the namespace by mistake.
if [[ $GNT_BLACKHOLE == yes ]]; then
  ip route replace blackhole "$GNT_SUBNET"
fi
log "netns $GNT_NETNS: $GNT_BRIDGE $GNT_NODE_IP/$GNT_NETMASK (master IP $GNT_MASTER_IP)"

# --- 3. /etc/hosts (edited in place, original kept for cluster-down) --------
orig="$GNT_STATE_DIR/hosts.orig"
if [[ ! -e $orig ]]; then
  cp -p "$GNT_HOSTS_FILE" "$orig.tmp" && mv "$orig.tmp" "$orig"
fi
"$GNT_PY" - "$orig" "$GNT_HOSTNAME" "$GNT_NODE_NAME" "$GNT_NODE_IP" \
  "$GNT_CLUSTER_NAME" "$GNT_MASTER_IP" "$GNT_HOSTS_BEGIN" "$GNT_HOSTS_END" \
  "$GNT_SECONDARY_IP" "$GNT_CERT_CN" > "$GNT_STATE_DIR/hosts.new" <<'PY'
import sys
orig, short, fqdn, node_ip, cname, mip, begin, end, sip, cert_cn = sys.argv[1:]
mine = {short, fqdn}
out = []
for line in open(orig, encoding="utf-8", errors="surrogateescape"):
    body = line.split("#", 1)[0].split()
    if len(body) >= 2 and (body[0].startswith("127.") or body[0] == "::1") \
            and mine & set(body[1:]):
        # socket.getfqdn() must not resolve to loopback (gnt-cluster init
        # refuses): drop our names from loopback lines, comment out emptied ones.
        rest = [n for n in body[1:] if n not in mine]
        if rest:
            line = "%s %s  # gnt-lab: removed %s\n" % (body[0], " ".join(rest),
                                                     " ".join(sorted(mine & set(body[1:]))))
        else:
            line = "# gnt-lab: " + line
    out.append(line if line.endswith("\n") else line + "\n")
out.append(begin + "\n")
out.append("%s %s %s\n" % (node_ip, fqdn, short))
out.append("%s %s\n" % (mip, cname))
out.append("%s %s\n" % (sip, cert_cn))
out.append(end + "\n")
sys.stdout.write("".join(out))
PY
if ! cmp -s "$GNT_STATE_DIR/hosts.new" "$GNT_HOSTS_FILE"; then
  cat "$GNT_STATE_DIR/hosts.new" > "$GNT_HOSTS_FILE"   # in place: same inode
fi
rm -f "$GNT_STATE_DIR/hosts.new"
fq=$("$GNT_PY" -c 'import socket; print(socket.getfqdn())')
[[ $fq == "$GNT_NODE_NAME" ]] || die "socket.getfqdn() is '$fq', want $GNT_NODE_NAME"
log "/etc/hosts: $GNT_NODE_NAME=$GNT_NODE_IP, $GNT_CLUSTER_NAME=$GNT_MASTER_IP, $GNT_CERT_CN=$GNT_SECONDARY_IP (secondary)"

# --- 4. guest OS and providers ------------------------------------------------
osdir="$GNT_OS_DIR/$GNT_OS_NAME"
mkdir -p "$osdir"
cp "$GNT_LAB_DIR"/noop-os/* "$osdir/"
touch "$osdir/.gnt-lab"
# Ganeti 3.0 writes one log per provider call (all but attach) here, but
# neither the package nor ensure-dirs creates it: without it every ext disk
# operation fails with "Cannot find log directory".
install -d -m 0750 -o root -g root /var/log/ganeti/extstorage
for arg in "$@"; do
  if [[ $arg == *=* ]]; then name=${arg%%=*}; src=${arg#*=}; else src=$arg; name=; fi
  src=$(cd "$src" && pwd) || die "no such provider dir: $src"
  name=${name:-$(basename "$src")}
  dst="$GNT_ES_DIR/$name"
  mkdir -p "$GNT_ES_DIR"
  if [[ -L $dst || -e $dst ]] && ! grep -qx "$dst" "$GNT_STATE_DIR/providers" 2>/dev/null; then
    if [[ ! -L $dst || $(readlink "$dst") != "$src" ]]; then
      die "$dst exists and was not installed by cluster-up.sh"
    fi
  fi
  rm -rf "$dst"
  if [[ $GNT_PROVIDER_INSTALL == copy ]]; then
    cp -a "$src" "$dst"
  else
    ln -s "$src" "$dst"
  fi
  grep -qx "$dst" "$GNT_STATE_DIR/providers" 2>/dev/null || echo "$dst" >> "$GNT_STATE_DIR/providers"
  for s in create attach detach remove grow setinfo verify; do
    [[ -x $dst/$s ]] || log "WARNING: provider $name lacks executable $s"
  done
  [[ -f $dst/parameters.list ]] || log "WARNING: provider $name lacks parameters.list"
  log "provider $name -> $dst ($GNT_PROVIDER_INSTALL of $src)"
done

# --- 5. cluster ----------------------------------------------------------------
if ! cluster_configured; then
  log "gnt-cluster init $GNT_CLUSTER_NAME"
  nsx gnt-cluster init \
    --enabled-hypervisors=fake \
    --enabled-disk-templates=ext,diskless \
    --ipolicy-disk-templates=ext,diskless \
    --master-netdev="$GNT_BRIDGE" \
    --master-netmask="$GNT_NETMASK" \
    -N "mode=bridged,link=$GNT_BRIDGE" \
    --ipolicy-bounds-specs "min:cpu-count=1,disk-count=1,disk-size=4,memory-size=32,nic-count=0,spindle-use=0/max:cpu-count=8,disk-count=16,disk-size=1048576,memory-size=32768,nic-count=8,spindle-use=12" \
    --no-etc-hosts --no-ssh-init \
    --secondary-ip="$GNT_SECONDARY_IP" \
    "$GNT_CLUSTER_NAME"
  log "cluster initialised"
else
  # Re-run: start whatever is not running, inside the netns.
  for d in $(/usr/lib/ganeti/daemon-util list-start-daemons); do
    nsx /usr/lib/ganeti/daemon-util check-and-start "$d"
  done
  log "daemons checked"
fi
bad=0
while read -r pid name; do
  [[ -n $pid ]] || continue
  ns=$(pid_netns "$pid")
  if [[ $ns != "$GNT_NETNS" ]]; then log "ERROR: $name ($pid) is in netns '${ns:-main}'"; bad=1; fi
done < <(ganeti_daemon_pids)
((bad == 0)) || die "daemons outside netns $GNT_NETNS"

# --- 6. RAPI user and checks -----------------------------------------------------
users=/var/lib/ganeti/rapi/users
mkdir -p "$(dirname "$users")"
line="$GNT_RAPI_USER $GNT_RAPI_PASS write"
if ! grep -qxF "$line" "$users" 2>/dev/null; then
  { grep -v "^$GNT_RAPI_USER " "$users" 2>/dev/null || true; echo "$line"; } > "$users.tmp"
  mv "$users.tmp" "$users"
fi
chown gnt-rapi:gnt-rapi "$users" 2>/dev/null || true
chmod 640 "$users"

# ganeti-watcher (cron, if cron runs) would start missing daemons in the
# main netns: keep it paused while the lab lives (destroy drops the pause).
nsx gnt-cluster watcher pause 1d >/dev/null

code=000
for _ in $(seq 1 50); do
  code=$(nsx curl -sk -o /dev/null -w '%{http_code}' -u "$GNT_RAPI_USER:$GNT_RAPI_PASS" \
    "https://127.0.0.1:$GNT_RAPI_PORT/2/info" 2>/dev/null) || true
  [[ $code == 200 ]] && break
  sleep 0.2
done
[[ $code == 200 ]] || die "RAPI GET /2/info = $code"
log "RAPI https://127.0.0.1:$GNT_RAPI_PORT (in netns $GNT_NETNS) answers 200"

if (($#)); then
  diag=$(cd / && nsx gnt-storage diagnose 2>&1) || true
  for arg in "$@"; do
    if [[ $arg == *=* ]]; then name=${arg%%=*}; else name=$(basename "$arg"); fi
    st=$(awk -v p="Provider: $name" '$0==p{f=1;next} /^Provider:/{f=0} f&&/status:/{sub(/.*status: /,"");print;exit}' <<<"$diag")
    if [[ $st == valid* ]]; then log "gnt-storage diagnose: $name valid"
    else log "WARNING: gnt-storage diagnose: $name: ${st:-not listed}"; fi
  done
fi
log "cluster $GNT_CLUSTER_NAME up (node $GNT_NODE_NAME), took $(elapsed) s"
