# shellcheck shell=bash
# What the cluster scenarios share (sourced after lib.sh, with A, B, DA, DB, I,
# GO, GIO set and W, the folder of this run, set before the first run/check):
# pass/fail bookkeeping, the guest writers, the provider-call bookkeeping.
passed=0 failed=0
ok()  { passed=$((passed + 1)); log "ok   - $*"; }
bad() { failed=$((failed + 1)); log "FAIL - $*"; }
# run NAME CMD...: a step; its output goes to a numbered file, shown on failure.
run() {
  local name=$1; shift
  local f="${W:-/tmp}/$(printf '%02d' $((passed + failed)))-${name//[^A-Za-z0-9_.-]/_}.log"
  if "$@" >"$f" 2>&1; then ok "$name"; else bad "$name (exit $?), last lines of $f:"; tail -n 15 "$f" | sed 's/^/      /' >&2; return 1; fi
}
# check NAME CMD...: an assertion (silent command).
check() { local name=$1; shift; if "$@" >/dev/null 2>&1; then ok "$name"; else bad "$name"; fi; }

archip() { gc_archip "$@"; }
jq_() { "$GC_PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# The image every instance starts from: 64 MiB, snapshot img-v1.
setup_image() {
  archip info img-v1 >/dev/null 2>&1 && return 0
  head -c 64M /dev/urandom > "$GC_ROOT/images/img.raw"
  archip import img "$GC_ROOT/images/img.raw" >/dev/null && archip snapshot img img-v1 >/dev/null
}

# start_writer NODE NAME "AFTER..." [--go FILE]: a guest writer on NODE writing
# through the device published for $V, records numbered after AFTER's.
start_writer() {
  local n=$1 name=$2 after="" x d; d=$(node_dir "$1")
  for x in $3; do after+="$W/$x.ack "; done
  shift 3
  nx "$n" env GUESTIO_AFTER="${WRITER_AFTER:-$after}" setsid -f /bin/sh -c 'echo $$ > "$1"; shift; exec "$@" 2>"$0"' \
    "$W/$name.err" "$W/$name.pid" "$GC_PY" "$GIO" write "$name" "$d/dev.$V" "$W/$name.ack" "$d/writer.$V.pid" "$@"
}
# wait_acks NAME N: until NAME acknowledged N writes (10 s at most).
wait_acks() {
  local _; for _ in $(seq 500); do
    [[ $(wc -l 2>/dev/null < "$W/$1.ack" || echo 0) -ge $2 ]] && return 0; sleep 0.02
  done; return 1
}
last_seq() { tail -n 1 "$W/$1.ack" | cut -d' ' -f1; }
# handoff X Y: first acknowledged write of Y minus the last of X, in seconds.
handoff() {
  [[ -s $W/$1.ack && -s $W/$2.ack ]] || { echo "n/a"; return; }
  awk -v a="$(tail -n 1 "$W/$1.ack" | cut -d' ' -f2)" -v b="$(head -n 1 "$W/$2.ack" | cut -d' ' -f2)" 'BEGIN{printf "%.3f", b-a}'
}
cleanup_writers() {
  local f p
  for f in "$W"/*.pid; do [[ -e $f ]] && p=$(cat "$f") && kill -TERM "$p" 2>/dev/null; done
  sleep 0.2; rm -f "$GO" "$DA"/writer.*.pid "$DB"/writer.*.pid
}

# Provider calls: mark TAG before a step; calls_since TAG merges what each
# node's wrapper recorded since (time node action volume excl= ...).
mark() {
  local n; : > "$W/mark-$1"
  for n in $GC_NODES; do echo "$n $(wc -l < "$(node_dir "$n")/calls.log" 2>/dev/null || echo 0)" >> "$W/mark-$1"; done
}
record_calls() {
  local n from
  for n in $GC_NODES; do
    from=$(awk -v n="$n" '$1==n{print $2}' "$W/mark-$1"); from=${from:-0}
    tail -n +"$((from + 1))" "$(node_dir "$n")/calls.log" 2>/dev/null
  done | sort -n > "$W/calls-$1.txt"
}
# provider_share TAG WALL: the provider's calls since TAG on every node, the
# time they took together and their share of WALL seconds (a Ganeti step):
# "N calls, X s (P% of WALL s)". The wrapper records each call's start and end.
provider_share() {
  record_calls "$1"
  awk -v wall="$2" '
    $3 == "end" { k = $2 " " $4 " " $5; if (k in start) { sum += $1 - start[k]; n++; delete start[k] } next }
    { start[$2 " " $3 " " $4] = $1 }
    END { printf "%d calls, %.2f s (%.0f%% of %.2f s)", n, sum, (wall > 0 ? 100 * sum / wall : 0), wall }' "$W/calls-$1.txt"
}
# called NODE TAG TEXT: NODE's wrapper recorded "NODE TEXT" since TAG.
called() { record_calls "$2"; grep -qF " $1 $3" "$W/calls-$2.txt"; }
# order_ok TAG "NODE TEXT"...: these calls happened in this order since TAG.
order_ok() {
  local tag=$1 line=0 l; shift; record_calls "$tag"
  for p; do
    l=$(awk -v from="$line" -v p=" $p" 'NR > from && index($0, p) {print NR; exit}' "$W/calls-$tag.txt")
    [[ -n $l ]] || return 1; line=$l
  done
}

primary_is() { [[ $(nx "$A" gnt-instance list --no-headers -o pnode "$I") == "$(node_fqdn "$1")" ]]; }
# holder_is NODE: the volume's lock is exclusive, held by NODE alone.
holder_is() {
  [[ $(archip info "$V" --json | jq_ '(d.get("lock") or {}).get("mode"), [h["node"] for h in (d.get("lock") or {}).get("holders", [])]') == "exclusive ['$(node_fqdn "$1")']" ]]
}
no_holder() { [[ $(archip info "$V" --json | jq_ 'len((d.get("lock") or {}).get("holders") or [])') == 0 ]]; }
nothing_attached() {
  [[ $(nx "$1" "$GC_ARCHIP_BIN/archip" attached --runtime-dir "$(node_rundir "$1")" --json | jq_ 'len(d)') == 0 ]]
}
vol_gone() { ! archip info "$1" >/dev/null 2>&1; }
# gio_check NODE NAME...: the writers' records read back through NODE's device.
gio_check() {
  local n=$1 x acks=(); shift
  for x; do acks+=("$W/$x.ack"); done
  nx "$n" "$GC_PY" "$GIO" check "$(cat "$(node_dir "$n")/dev.$V")" "${acks[@]}" | tee -a "$W/gio-check.log"
}

# migrate_to TARGET SOURCE NEWWRITER "EARLIER WRITERS" TAG: a writer waits on
# TARGET for the handoff signal; `gnt-instance migrate -f`; T_TAG and H_TAG
# are the command's time and the handoff (last write acknowledged on SOURCE
# to the first on TARGET).
migrate_to() {
  local to=$1 from=$2 new=$3 earlier=$4 tag=$5 t last
  last=${earlier##* }
  rm -f "$GO"
  WRITER_AFTER=$(for x in $earlier; do printf '%s ' "$W/$x.ack"; done) start_writer "$to" "$new" "" --go "$GO"
  mark "$tag"; t=$(now)
  run "gnt-instance migrate -f (live) $(node_fqdn "$from") -> $(node_fqdn "$to")" nx "$A" gnt-instance migrate -f "$I"
  printf -v "T_$tag" '%s' "$(secs "$t" "$(now)")"
  check "primary node is $(node_fqdn "$to")" primary_is "$to"
  check "the guest writer on $from stopped before Ganeti's close there" \
    grep -q "$from guest writer .* stopped before close" "$(node_dir "$from")/calls.log"
  wait_acks "$new" 1
  check "the guest writer carries on on $to" test -s "$W/$new.ack"
  printf -v "H_$tag" '%s' "$(handoff "$last" "$new")"
  record_calls "$tag"
  local tv=T_$tag hv=H_$tag
  printf -v "P_$tag" '%s' "$(provider_share "$tag" "${!tv}")"
  local pv=P_$tag
  log "migrate $from -> $to: ${!tv} s; handoff (last write acknowledged on $from to first on $to): ${!hv} s; the provider: ${!pv}"
}
