#!/bin/bash
# Bring up the multi-node Ganeti lab: nodes $GC_NODES (default a b; the first
# is the master) and the controller namespace $GC_CTRL (default c), each in its
# own network, mount and UTS namespaces (see lib.sh), on one switch bridge.
# Each node runs sshd (its own host keys; root's key in its own /root/.ssh)
# and its own `archip serve`, started before Ganeti as systemd would; then
# `gnt-cluster init` on the master (fake hypervisor, ext template) and
# `gnt-node add` of the others (over ssh, as Ganeti does it).
# Root. Idempotent: a re-run checks and starts what is missing. Prints how
# long each step took. GC_ARCHIP_BIN=DIR holds archip and archip-extstorage.
# GC_BACKEND=rados puts the shared store in a one-node Ceph on the lab's
# switch bridge (lib.sh); the default is a folder.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
case ${1:-} in -h|--help) gc_usage "$0"; exit 0;; esac
gc_clean_env "$0" "$@"
need_root
for b in archip archip-extstorage; do [[ -x $GC_ARCHIP_BIN/$b ]] || die "no $b in $GC_ARCHIP_BIN (GC_ARCHIP_BIN)"; done
[[ -x /usr/lib/ganeti/daemon-util && -d /usr/share/ganeti/$GC_GANETI_VERSION ]] || die "Ganeti $GC_GANETI_VERSION is not installed"
for t in /usr/sbin/sshd /usr/bin/ssh-keygen /usr/bin/nsenter /usr/bin/unshare; do [[ -x $t ]] || die "missing $t"; done
M=$(master)

# --- 1. folders and the private mount that holds the namespace files -----------
install -d -m 0755 "$GC_ROOT" "$GC_ROOT/nodes" "$GC_ROOT/ns"
if ! grep -q " $GC_ROOT/ns $GC_ROOT/ns " /proc/self/mountinfo; then
  mount --bind "$GC_ROOT/ns" "$GC_ROOT/ns"
fi
mount --make-private "$GC_ROOT/ns"
[[ $GC_BACKEND != dir || -d $GC_STORE ]] || "$GC_ARCHIP_BIN/archip" init --store "$GC_STORE" >/dev/null
# One root key for the lab (Ganeti's node add logs in from the master).
install -d -m 0700 "$GC_ROOT/hostkeys"
[[ -s $GC_ROOT/hostkeys/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -f "$GC_ROOT/hostkeys/ssh_host_ed25519_key"
[[ -s $GC_ROOT/hostkeys/ssh_host_rsa_key ]] || ssh-keygen -q -t rsa -b 2048 -N '' -f "$GC_ROOT/hostkeys/ssh_host_rsa_key"
[[ -s $GC_ROOT/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C gntc-lab -f "$GC_ROOT/id_ed25519"
hosts=$(printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n'
  for n in $GC_NODES $GC_CTRL; do echo "$(node_ip "$n") $(node_fqdn "$n") $(node_short "$n")"; done
  echo "$GC_MASTER_IP $GC_CLUSTER")
for n in $GC_NODES $GC_CTRL; do
  d=$(node_dir "$n")
  install -d -m 0755 "$d" "$d/run-ganeti" "$d/run-archip" "$d/lib-ganeti" "$d/log-ganeti" \
    "$d/etc-ssh" "$d/etc-ganeti" "$d/srv-ganeti" "$d/srv-ganeti/os" "$d/srv-ganeti/extstorage"
  install -d -m 1777 "$d/lock"
  install -d -m 0700 "$d/root" "$d/root/.ssh"
  echo "$hosts" > "$d/hosts"
  # Ganeti's version links as they are now: an upgrade of the host's
  # /etc/ganeti during a run does not switch this node's version.
  ln -sfn "/usr/lib/ganeti/$GC_GANETI_VERSION" "$d/etc-ganeti/lib"
  ln -sfn "/usr/share/ganeti/$GC_GANETI_VERSION" "$d/etc-ganeti/share"
  # ssh: the host's client config, our own server config and host keys.
  cp -a /etc/ssh/ssh_config /etc/ssh/moduli "$d/etc-ssh/" 2>/dev/null || true
  mkdir -p "$d/etc-ssh/ssh_config.d"
  cat > "$d/etc-ssh/sshd_config" <<CONF
ListenAddress $(node_ip "$n")
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile /run/ganeti/lab-sshd.pid
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_rsa_key
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
CONF
  # One set of host keys for every node: Ganeti's ssh checks each node's key
  # against the cluster name's (HostKeyAlias), as its own ssh setup arranges.
  cp -p "$GC_ROOT"/hostkeys/ssh_host_* "$d/etc-ssh/"
  cp "$GC_ROOT/id_ed25519" "$d/root/.ssh/id_ed25519"; cp "$GC_ROOT/id_ed25519.pub" "$d/root/.ssh/id_ed25519.pub"
  cp "$GC_ROOT/id_ed25519.pub" "$d/root/.ssh/authorized_keys"
  chmod 600 "$d/root/.ssh/"*
  # Ganeti's daemon arguments: RAPI on every address, as a cluster's is (the
  # controller's Cyclades reaches it on the master IP); Debian's binds 127.0.0.1.
  sed 's/^RAPI_ARGS=.*/RAPI_ARGS="-b 0.0.0.0 --require-authentication"/' /etc/default/ganeti > "$d/default-ganeti"
  # archip: the shared store, this node's name, its runtime dir.
  install -d -m 0755 "$d/run-archip/$(node_short "$n")"
  # A short lease, so the node-death and cut-off scenarios wait seconds, not half a minute.
  printf '[store]\npath = %s\n[node]\nname = %s\nruntime_dir = %s\n[fill]\nimage_dirs = %s\n[locks]\nlease = %s\nclock_skew = %s\n' \
    "$GC_STORE" "$(node_fqdn "$n")" "$(node_rundir "$n")" "$GC_ROOT/images" "$GC_LEASE" "$GC_CLOCK_SKEW" > "$d/archip.conf"
done
mkdir -p "$GC_ROOT/images"
log "folders under $GC_ROOT"

# --- 2. network: a switch namespace, one namespace per node --------------------
netns_exists "$GC_SWITCH" || ip netns add "$GC_SWITCH"
ip -n "$GC_SWITCH" link set lo up
ip -n "$GC_SWITCH" link show "$GC_SWBR" >/dev/null 2>&1 || ip -n "$GC_SWITCH" link add "$GC_SWBR" type bridge
ip -n "$GC_SWITCH" link set "$GC_SWBR" up
for n in $GC_NODES $GC_CTRL; do
  ns=$(node_netns "$n")
  netns_exists "$ns" || ip netns add "$ns"
  ip -n "$ns" link set lo up
  if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
    ip -n "$GC_SWITCH" link del "$ns-p" 2>/dev/null || true
    ip -n "$GC_SWITCH" link add "$ns-p" type veth peer name eth0 netns "$ns"
  fi
  ip -n "$GC_SWITCH" link set "$ns-p" master "$GC_SWBR" up
  ip -n "$ns" link show "$GC_BR" >/dev/null 2>&1 || ip -n "$ns" link add "$GC_BR" type bridge
  ip -n "$ns" link set eth0 master "$GC_BR" up
  ip -n "$ns" link set "$GC_BR" up
  ip -n "$ns" addr replace "$(node_ip "$n")/$GC_NETMASK" dev "$GC_BR"
  [[ -z $(ip -n "$ns" route show default) ]] || die "netns $ns has a default route"
done
if [[ $GC_BACKEND == rados ]]; then
  # The lab's Ceph on the switch bridge: every node reaches it over its eth0.
  ip -n "$GC_SWITCH" addr replace "$GC_CEPH_IP/$GC_NETMASK" dev "$GC_SWBR"
  t=$(now)
  gc_ceph up >/dev/null || die "the lab's Ceph did not come up (logs in $GC_CEPH_DIR/log)"
  gc_archip list >/dev/null 2>&1 || gc_archip init >/dev/null || die "cannot make the store $GC_STORE"
  log "ceph: a one-node cluster at $GC_CEPH_IP (switch namespace), store $GC_STORE: $(secs "$t" "$(now)") s"
fi
log "network: switch $GC_SWITCH/$GC_SWBR, nodes $(for n in $GC_NODES $GC_CTRL; do printf '%s=%s ' "$(node_netns "$n")" "$(node_ip "$n")"; done)"

# --- 3. mount and UTS namespaces (persistent, bound onto files) -----------------
for n in $GC_NODES $GC_CTRL; do
  node_ns_up "$n" && continue
  umount "$GC_ROOT/ns/$n.mnt" "$GC_ROOT/ns/$n.uts" 2>/dev/null || true
  touch "$GC_ROOT/ns/$n.mnt" "$GC_ROOT/ns/$n.uts"
  nsenter --net="/run/netns/$(node_netns "$n")" -- \
    unshare --mount="$GC_ROOT/ns/$n.mnt" --uts="$GC_ROOT/ns/$n.uts" --propagation slave \
    "$GC_LAB_DIR/ns-setup.sh" "$(node_dir "$n")" "$(node_short "$n")"
done
for n in $GC_NODES $GC_CTRL; do
  fq=$(nx "$n" "$GC_PY" -c 'import socket; print(socket.getfqdn())')
  [[ $fq == "$(node_fqdn "$n")" ]] || die "node $n: socket.getfqdn() is '$fq', want $(node_fqdn "$n")"
done
log "mount+UTS namespaces: $(for n in $GC_NODES $GC_CTRL; do printf '%s ' "$(node_fqdn "$n")"; done)"

# --- 4. per node: Ganeti's dirs, OS, provider, sshd, archip serve ------------------
for n in $GC_NODES; do
  d=$(node_dir "$n")
  nx "$n" /usr/lib/ganeti/ensure-dirs >/dev/null
  install -d -m 0750 "$d/log-ganeti/extstorage"
  mkdir -p "$d/srv-ganeti/os/$GC_OS_NAME"
  cp "$GC_REPO"/tests/e2e/ganeti/noop-os/* "$d/srv-ganeti/os/$GC_OS_NAME/"
  pd=$d/srv-ganeti/extstorage/archipelago
  "$GC_REPO/scripts/install-extstorage.sh" "$pd" "$GC_ARCHIP_BIN" "$d/archip.conf"
  # Record every call Ganeti makes (time, node, action, the variables that
  # matter) in $d/calls.log, and as a first stderr line in the log file Ganeti
  # keeps for each call but attach; then run the installed shim. Two lab
  # hooks stand in for the hypervisor the fake one does not run: attach
  # records the device, a successful open publishes it in $d/dev.VOL_NAME
  # (where the guest's I/O finds it; close and detach withdraw it), and
  # close and detach of a volume first stop the guest's writer of that volume on this node (a
  # real hypervisor has stopped the VM before Ganeti closes its disks) and
  # then signal $GC_ROOT/handoff.go (the VM runs on the other node now).
  for a in create attach detach remove grow setinfo verify snapshot open close; do
    mv -f "$pd/$a" "$pd/.$a.real"
    {
      echo '#!/bin/sh'
      echo "d=$d a=$a"
      cat <<'SH'
line="$(date +%s.%N) ${d##*/} $a ${VOL_NAME:-} excl=${VOL_OPEN_EXCLUSIVE:--} size=${VOL_SIZE:--} new=${VOL_NEW_SIZE:--} snap=${VOL_SNAPSHOT_NAME:--}"
echo "$line" >> "$d/calls.log"
# Its end too (the provider's share of each Ganeti step: checks.sh provider_share).
trap 'echo "$(date +%s.%N) ${d##*/} end $a ${VOL_NAME:-} rc=$?" >> "$d/calls.log"' EXIT
[ $a = attach ] || echo "gntc-lab: $line" >&2
if [ $a = close ] || [ $a = detach ]; then
  if p=$(cat "$d/writer.$VOL_NAME.pid" 2>/dev/null) && [ -n "$p" ]; then
    kill -TERM "$p" 2>/dev/null
    i=0; while [ -e "$d/writer.$VOL_NAME.pid" ] && kill -0 "$p" 2>/dev/null && [ $i -lt 1000 ]; do sleep 0.01; i=$((i + 1)); done
    rm -f "$d/writer.$VOL_NAME.pid"
    echo "$(date +%s.%N) ${d##*/} guest writer $p stopped before $a" >> "$d/calls.log"
    touch "${d%/nodes/*}/handoff.go"
  fi
fi
case $a in
attach)
  out=$("$(dirname "$0")/.$a.real" "$@") || exit $?
  printf '%s\n' "$out"
  printf '%s\n' "$out" | head -n 1 > "$d/attached.$VOL_NAME"
  exit 0;;
open)   # the guest may use the disk once Ganeti opened it
  "$(dirname "$0")/.$a.real" "$@" || exit $?
  cp "$d/attached.$VOL_NAME" "$d/dev.$VOL_NAME" 2>/dev/null
  exit 0;;
close|detach) rm -f "$d/dev.$VOL_NAME";;
esac
SH
      echo '"$(dirname "$0")/.$a.real" "$@"'
    } > "$pd/$a"
    chmod 0755 "$pd/$a"
  done
  if ! { p=$(cat "$d/run-ganeti/lab-sshd.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }; then
    nx "$n" /usr/sbin/sshd -f /etc/ssh/sshd_config
  fi
  start_serve "$n"
done
for n in $GC_NODES; do
  nx "$M" timeout 5 bash -c "exec 3<>/dev/tcp/$(node_ip "$n")/22" || die "node $M cannot reach sshd of node $n"
done
# The controller: an archip configuration only (it attaches nothing).
[[ -z $GC_CTRL ]] || nx "$GC_CTRL" "$GC_ARCHIP_BIN/archip" --config "$(node_dir "$GC_CTRL")/archip.conf" list >/dev/null
log "nodes: sshd and archip serve running ($(for n in $GC_NODES; do printf '%s:%s ' "$n" "$(serve_pid "$n")"; done))"

# --- 5. the cluster ---------------------------------------------------------------
if [[ ! -s $(node_dir "$M")/lib-ganeti/config.data ]]; then
  t=$(now)
  nx "$M" gnt-cluster init \
    --enabled-hypervisors=fake \
    --enabled-disk-templates=ext,diskless \
    --ipolicy-disk-templates=ext,diskless \
    --master-netdev="$GC_BR" --master-netmask="$GC_NETMASK" \
    -N "mode=bridged,link=$GC_BR" \
    --ipolicy-bounds-specs "min:cpu-count=1,disk-count=1,disk-size=4,memory-size=32,nic-count=0,spindle-use=0/max:cpu-count=8,disk-count=16,disk-size=1048576,memory-size=32768,nic-count=8,spindle-use=12" \
    --no-etc-hosts --no-ssh-init \
    "$GC_CLUSTER"
  log "gnt-cluster init on $(node_fqdn "$M"): $(secs "$t" "$(now)") s"
else
  for dm in $(/usr/lib/ganeti/daemon-util list-start-daemons); do
    nx "$M" /usr/lib/ganeti/daemon-util check-and-start "$dm"
  done
fi
nx "$M" gnt-cluster watcher pause 1d >/dev/null
for n in $GC_NODES; do
  [[ $n == "$M" ]] && continue
  if nx "$M" gnt-node list --no-headers -o name | grep -qx "$(node_fqdn "$n")"; then
    for dm in $(/usr/lib/ganeti/daemon-util list-start-daemons); do
      nx "$n" /usr/lib/ganeti/daemon-util check-and-start "$dm" >/dev/null 2>&1 || true
    done
    if [[ $(nx "$M" gnt-node list --no-headers -o offline "$(node_fqdn "$n")") == Y ]]; then
      nx "$M" gnt-node add --readd --no-ssh-key-check "$(node_fqdn "$n")" >/dev/null
      log "gnt-node add --readd $(node_fqdn "$n") (it was offline)"
    fi
    continue
  fi
  t=$(now)
  nx "$M" gnt-node add --no-ssh-key-check "$(node_fqdn "$n")"
  log "gnt-node add $(node_fqdn "$n"): $(secs "$t" "$(now)") s"
done
# Every Ganeti daemon in its node's network namespace.
for n in $GC_NODES; do
  for f in "$(node_dir "$n")"/run-ganeti/ganeti-*.pid; do
    [[ -e $f ]] || continue
    p=$(cat "$f"); kill -0 "$p" 2>/dev/null || continue   # stale (a killed node)
    [[ $(ip netns identify "$p" 2>/dev/null) == "$(node_netns "$n")" ]] ||
      die "$(basename "$f" .pid) ($p) of node $n is not in netns $(node_netns "$n")"
  done
done
diag=$(nx "$M" gnt-storage diagnose 2>&1) || true
for n in $GC_NODES; do
  grep -A3 "^Provider: archipelago" <<<"$diag" | grep -q "status: valid" || die "gnt-storage diagnose: archipelago not valid: $diag"
done
log "cluster $GC_CLUSTER up: nodes $(nx "$M" gnt-node list --no-headers -o name | tr '\n' ' ')took $(elapsed) s"
