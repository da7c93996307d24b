#!/bin/bash
# Run by up.sh inside a node's new mount and UTS namespaces (and its network
# namespace): hostname, the node's own folders over the host's paths.
#   ns-setup.sh NODE_DIR SHORT_HOSTNAME
set -euo pipefail
d=$1
hostname "$2"
# sysfs of this network namespace (Ganeti checks bridges in /sys/class/net).
mount -t sysfs sysfs /sys
# Copies of other people's FUSE mounts would keep their sessions alive after
# they unmount: drop ours (theirs stay).
awk '{for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^fuse/) print $5; break }}' /proc/self/mountinfo |
  sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
# A /run of the node's own: /run/ganeti, /run/archip, /run/lock, sshd's.
mount -t tmpfs -o mode=0755 gntc-run /run
mkdir -p /run/ganeti /run/archip /run/lock /run/sshd
mount --bind "$d/run-ganeti" /run/ganeti
mount --bind "$d/run-archip" /run/archip
mount --bind "$d/lock" /run/lock
mount --bind "$d/lib-ganeti" /var/lib/ganeti
mount --bind "$d/log-ganeti" /var/log/ganeti
mount --bind "$d/hosts" /etc/hosts
mount --bind "$d/etc-ssh" /etc/ssh
mount --bind "$d/etc-ganeti" /etc/ganeti
mount -t tmpfs -o mode=0755 gntc-srv /srv
mkdir -p /srv/ganeti
mount --bind "$d/srv-ganeti" /srv/ganeti
mount --bind "$d/root" /root
mount --bind "$d/default-ganeti" /etc/default/ganeti
