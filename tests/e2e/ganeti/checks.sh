# What the end-to-end scripts share (sourced after lib.sh): where the binaries
# are, and pass/fail bookkeeping. The caller sets W, the folder where each
# step's output is kept, before the first run.
REPO=$(cd "$GNT_LAB_DIR/../../.." && pwd)
BIN=${GNT_ARCHIP_BIN:-$REPO/.build/debug}
need_bins() { local b; for b; do [[ -x $BIN/$b ]] || die "no $b in $BIN (swift build first)"; done; }
passed=0 failed=0
ok()   { passed=$((passed + 1)); log "ok   - $*"; }
bad()  { failed=$((failed + 1)); log "FAIL - $*"; }
# run NAME CMD...: a step; its output goes to a numbered file, shown on failure.
run() {
  local name=$1; shift
  local f="$W/$(printf '%02d' $((passed + failed)))-${name//[^A-Za-z0-9_.-]/_}.log"
  if "$@" >"$f" 2>&1; then ok "$name"; else bad "$name (exit $?), last lines of $f:"; tail -n 15 "$f" | sed 's/^/      /' >&2; return 1; fi
}
# check NAME CMD...: an assertion (silent command).
check() { local name=$1; shift; if "$@" >/dev/null 2>&1; then ok "$name"; else bad "$name"; fi; }
