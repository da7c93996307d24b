#!/bin/bash
# The whole multi-node lab run: down.sh (a leftover lab), then for each
# backend of the shared store (GC_BACKENDS, default "dir rados"): up.sh,
# migrate.sh, nodedeath.sh, controller.sh, down.sh; each timed. Ends with the summed "N passed, N
# failed"; exit 1 on any failure. Each script's output is kept in a folder
# /var/tmp/gntc-test.*. Root. GC_ARCHIP_BIN=DIR as for up.sh;
# GC_KEEP=yes leaves the lab up.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
case ${1:-} in -h|--help) gc_usage "$0"; exit 0;; esac
gc_clean_env "$0" "$@"
need_root
P=0 F=0 rc=0
LOGS=$(mktemp -d /var/tmp/gntc-test.XXXXXX)
step() {
  local name=$1 t out f; shift; t=$(now); f=$LOGS/${name//[^A-Za-z0-9.-]/_}.log
  # Each script times itself from its own start.
  env -u gc_t0 "$@" 2>&1 | tee "$f" >&2; local r=${PIPESTATUS[0]}
  out=$(tail -n 1 "$f")
  if [[ $out =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
    P=$((P + BASH_REMATCH[1])); F=$((F + BASH_REMATCH[2]))
  elif ((r != 0)); then F=$((F + 1)); fi
  ((r == 0)) || rc=1
  TIMES+=("$name $(secs "$t" "$(now)") s")
}
TIMES=()
step "down (leftovers)" "$GC_LAB_DIR/down.sh"
# Both backends of the shared store, one lab each (GC_BACKENDS: which).
backends=${GC_BACKENDS:-dir rados}
for be in $backends; do
  step "up ($be)" env GC_BACKEND="$be" "$GC_LAB_DIR/up.sh"
  step "migrate.sh ($be)" env GC_BACKEND="$be" "$GC_LAB_DIR/migrate.sh"
  step "nodedeath.sh ($be)" env GC_BACKEND="$be" "$GC_LAB_DIR/nodedeath.sh"
  step "controller.sh ($be)" env GC_BACKEND="$be" "$GC_LAB_DIR/controller.sh"
  [[ ${GC_KEEP:-no} == yes && $be == "${backends##* }" ]] || step "down ($be)" env GC_BACKEND="$be" "$GC_LAB_DIR/down.sh"
done
log "times: $(IFS=';'; echo "${TIMES[*]}"); logs in $LOGS"
echo "$P passed, $F failed"
((rc == 0 && F == 0))
