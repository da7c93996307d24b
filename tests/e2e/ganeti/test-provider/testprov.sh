#!/bin/bash
# gnt-lab throw-away ExtStorage provider "testprov": sparse files attached
# with losetup.  Only proves the lab harness; it is not the product provider.
# Every call is logged (action + full environment) to $TP_DIR/calls.log.
#   usage: testprov.sh ACTION      (ACTION = the script name Ganeti runs)
set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin
TP_DIR=/var/tmp/gnt-testprov
VOLS=$TP_DIR/vols
ACTIONS="create attach detach remove grow setinfo verify snapshot open close"

action=${1:-}; shift || true
usage() { echo "usage: $action (no arguments; Ganeti passes everything in VOL_*/EXTP_* env vars)" >&2; }
case ${1:-} in
  -h|--help) usage; exit 0;;
  "") ;;
  *) usage; exit 2;;
esac
case " $ACTIONS " in *" $action "*) ;; *) echo "testprov: unknown action '$action'" >&2; exit 2;; esac

mkdir -p "$VOLS"
# One line per call: time, action, pid, cwd, umask, then every env var.
{
  printf '%s %s pid=%s cwd=%s umask=%s' "$(date -u +%FT%T.%NZ)" "$action" "$$" "$PWD" "$(umask)"
  while IFS= read -r -d '' kv; do
    k=${kv%%=*}
    case $k in PWD|OLDPWD|SHLVL|_) continue;; esac
    printf ' %s=%q' "$k" "${kv#*=}"
  done < <(env -0 | sort -z)
  printf '\n'
} >> "$TP_DIR/calls.log"

fail() { echo "testprov $action ${VOL_NAME:-?}: $*" >&2; exit 1; }
[[ -n ${VOL_NAME:-} ]] || fail "VOL_NAME is not set"
[[ $VOL_NAME != */* && $VOL_NAME != .* ]] || fail "bad VOL_NAME"
img=$VOLS/$VOL_NAME.img
meta=$VOLS/$VOL_NAME.meta

exec 9>"$TP_DIR/lock"
flock 9

loops() { [[ -e $img ]] && losetup -j "$img" -n -O NAME 2>/dev/null; }
setmeta() {  # key value
  touch "$meta"; grep -v "^$1=" "$meta" > "$meta.tmp"; printf '%s=%s\n' "$1" "$2" >> "$meta.tmp"; mv "$meta.tmp" "$meta"
}
mib() { [[ ${1:-} =~ ^[0-9]+$ ]] || fail "$2 is not a number of MiB: '${1:-}'"; }

case $action in
  create)
    mib "${VOL_SIZE:-}" VOL_SIZE
    if [[ -e $img ]]; then
      echo "volume exists, keeping it" >&2   # recreate-disks does this
    else
      truncate -s "${VOL_SIZE}M" "$img" || fail "cannot create $img"
      setmeta origin "${EXTP_ORIGIN:-}"
    fi
    setmeta uuid "${VOL_UUID:-}"; setmeta cname "${VOL_CNAME:-}"
    ;;
  attach)
    [[ -e $img ]] || fail "no such volume"
    dev=$(loops | head -n1)
    [[ -n $dev ]] || dev=$(losetup -f --show "$img") || fail "losetup failed"
    echo "$dev"
    ;;
  detach)
    for d in $(loops); do losetup -d "$d" || fail "losetup -d $d failed"; done
    ;;
  remove)
    for d in $(loops); do losetup -d "$d" || fail "losetup -d $d failed"; done
    rm -f "$img" "$meta"
    ;;
  grow)
    [[ -e $img ]] || fail "no such volume"
    mib "${VOL_NEW_SIZE:-}" VOL_NEW_SIZE
    cur=$(( $(stat -c %s "$img") / 1048576 ))
    (( VOL_NEW_SIZE >= cur )) || fail "cannot shrink from $cur to $VOL_NEW_SIZE MiB"
    truncate -s "${VOL_NEW_SIZE}M" "$img" || fail "truncate failed"
    for d in $(loops); do losetup -c "$d" || fail "losetup -c $d failed"; done
    ;;
  setinfo)
    [[ -e $img ]] || fail "no such volume"
    setmeta metadata "${VOL_METADATA:-}"
    ;;
  verify)
    if [[ -n ${EXTP_ORIGIN:-} && ! ${EXTP_ORIGIN} =~ ^[a-z]+:[^[:space:]]+$ ]]; then
      fail "origin must look like KIND:NAME, got '$EXTP_ORIGIN'"
    fi
    ;;
  snapshot)
    [[ -e $img ]] || fail "no such volume"
    [[ -n ${VOL_SNAPSHOT_NAME:-} && $VOL_SNAPSHOT_NAME != */* ]] || fail "bad VOL_SNAPSHOT_NAME"
    snap=$VOLS/$VOL_SNAPSHOT_NAME.img
    cp --sparse=always "$img" "$snap.tmp" && mv "$snap.tmp" "$snap" || fail "copy failed"
    if [[ -n ${VOL_SNAPSHOT_SIZE:-} ]]; then
      mib "$VOL_SNAPSHOT_SIZE" VOL_SNAPSHOT_SIZE
      (( VOL_SNAPSHOT_SIZE * 1048576 >= $(stat -c %s "$snap") )) && truncate -s "${VOL_SNAPSHOT_SIZE}M" "$snap"
    fi
    printf 'origin=snapshot-of:%s\n' "$VOL_NAME" > "$VOLS/$VOL_SNAPSHOT_NAME.meta"
    ;;
  open|close)
    [[ -e $img ]] || fail "no such volume"
    ;;
esac
exit 0
