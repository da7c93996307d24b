#!/usr/bin/env bash
# The main job on embedded defaults: a store in a local folder, a volume filled
# from an image, a snapshot, a clone, and verification of everything.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHIP=${ARCHIP:-.build/release/archip}
STORE=${STORE:-$PWD/demo-store}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export ARCHIP_STORE=$STORE
step() { printf '\n== %s\n' "$*"; }

rm -rf "$STORE"
step "an image: a 256 MiB ext4 file system with some files"
mkdir -p "$WORK/root/etc" "$WORK/root/data"
echo "demo image $(date -u +%FT%TZ)" > "$WORK/root/etc/motd"
head -c 20M /dev/urandom > "$WORK/root/data/blob"
sha256sum "$WORK/root/data/blob" | cut -d' ' -f1 > "$WORK/blob.sha256"
mkfs.ext4 -q -F -d "$WORK/root" "$WORK/image.raw" 256M

step "fill a volume from the image: every block hashed, the whole image checked against its SHA-256"
$ARCHIP fill image-vol --from "file:$WORK/image.raw" --sha256 "$(sha256sum "$WORK/image.raw" | cut -d' ' -f1)"
$ARCHIP info image-vol

step "snapshot it (O(1)), then write to the volume: the snapshot keeps the old bytes"
$ARCHIP snapshot image-vol image-snap
printf 'scribble' | $ARCHIP write image-vol --offset 0

step "content-address the snapshot: Pithos hashmap and top hash"
$ARCHIP hash image-snap --hashmap-out "$WORK/hashmap.json"
python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(len(m["hashes"]), "blocks of", m["block_size"], "bytes,", m["bytes"], "bytes in all")' "$WORK/hashmap.json"

step "clone the snapshot (copy-on-write, O(1)) into a 1 GiB volume for a VM"
$ARCHIP clone image-snap vm-disk0 --size 1G
$ARCHIP list

step "verify every block of every name"
for n in image-vol image-snap vm-disk0; do $ARCHIP verify "$n"; done

step "the clone holds the image's file system: export it and fsck it"
$ARCHIP export vm-disk0 "$WORK/vm-disk0.raw"
fsck.ext4 -fn "$WORK/vm-disk0.raw" >/dev/null && echo "fsck.ext4 -fn: clean"
debugfs -R "cat /data/blob" "$WORK/vm-disk0.raw" 2>/dev/null | sha256sum | cut -d' ' -f1 > "$WORK/blob.out"
cmp -s "$WORK/blob.sha256" "$WORK/blob.out" && echo "file /data/blob in the clone: checksum matches the image"
cmp -s <($ARCHIP read image-snap --length 1M) <(head -c 1M "$WORK/image.raw") && echo "snapshot: first MiB equals the image (the later write did not reach it)"

step "attach the clone on this node: a kernel block device and an NBD URI for QEMU"
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ] && [ -e /dev/loop-control ]; then
    export ARCHIP_RUNTIME_DIR=$WORK/run
    stop_daemon() {
        [ -f "$WORK/run/serve.pid" ] && kill "$(cat "$WORK/run/serve.pid")" 2>/dev/null || true
    }
    trap 'stop_daemon; rm -rf "$WORK"' EXIT
    mapfile -t lines < <($ARCHIP attach vm-disk0)
    echo "block device: ${lines[0]}"
    echo "QEMU drive:   ${lines[1]}"
    fsck.ext4 -fn "${lines[0]}" >/dev/null && echo "fsck.ext4 -fn ${lines[0]}: clean"
    if command -v qemu-img >/dev/null; then qemu-img info "${lines[1]}" | sed -n '1,3p'; fi
    $ARCHIP attached
    # Streaming writes in 1 MiB pieces (the block checksums are worked out as
    # the pieces arrive), made durable by fsync, then read back.
    head -c 16M /dev/urandom > "$WORK/pattern"
    dd if="$WORK/pattern" of="${lines[0]}" bs=1M seek=512 oflag=direct conv=fsync status=none
    cmp <(dd if="${lines[0]}" bs=1M skip=512 count=16 iflag=direct status=none) "$WORK/pattern" && echo "16 MiB written through ${lines[0]} (O_DIRECT, fsync) read back equal"
    $ARCHIP detach vm-disk0
    $ARCHIP verify vm-disk0
    stop_daemon
else
    echo "(skipped: attaching needs root, /dev/fuse and loop devices)"
fi

printf '\ndemo: OK (store left in %s)\n' "$STORE"
