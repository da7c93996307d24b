#!/bin/sh
# Installs the Ganeti provider folder: parameters.list and one two-line shim
# per action, pointing at BINDIR/archip-extstorage and CONFIG.
#   scripts/install-extstorage.sh DEST_DIR BINDIR CONFIG
# e.g. scripts/install-extstorage.sh /usr/share/ganeti/extstorage/archipelago /usr/bin /etc/archip/archip.conf
set -eu
if [ $# -ne 3 ]; then
    echo "usage: $0 DEST_DIR BINDIR CONFIG" >&2
    exit 2
fi
dest=$1 bindir=$2 config=$3
src=$(dirname "$0")/../extstorage/archipelago
install -d -m 0755 "$dest"
install -m 0644 "$src/parameters.list" "$dest/parameters.list"
for action in create attach detach remove grow setinfo verify snapshot open close; do
    tmp="$dest/.$action.tmp"
    printf '#!/bin/sh\nexec %s --config %s %s "$@"\n' "$bindir/archip-extstorage" "$config" "$action" > "$tmp"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$dest/$action"
done
