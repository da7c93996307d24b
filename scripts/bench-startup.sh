#!/usr/bin/env bash
# How long the Ganeti provider takes to start, against a Swift program that
# only imports Foundation and prints one line, in the same run.
#   scripts/bench-startup.sh BINDIR     (BINDIR holds archip-extstorage; release build)
# Each provider script runs through its shim (scripts/install-extstorage.sh) as
# Ganeti runs it (clean environment, a folder store in the configuration) but
# without VOL_NAME: the program starts, reads its configuration and refuses,
# so what is measured is the start (verify needs no VOL_NAME: it opens the
# store, a whole call). Also archip-extstorage --help. Runs alternate between the programs,
# BENCH_STARTUP_RUNS each (default 200); medians and p95 in ms, and each
# median's ratio to the one-liner's. Goal: every ratio at most 2.0.
# Appends to $BENCH_DIR/results.txt (default ./.bench).
set -euo pipefail
BIN=$(cd "${1:?usage: $0 BINDIR}" && pwd)
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-$PWD/.bench}
RESULTS=$BENCH_DIR/results.txt
RUNS=${BENCH_STARTUP_RUNS:-200}
WORK=$BENCH_DIR/startup
say() { printf '%s\n' "$*"; mkdir -p "$BENCH_DIR"; printf '%s\n' "$*" >> "$RESULTS"; }
skip() { say "startup: skipped: $*"; exit 0; }

[ -x "$BIN/archip-extstorage" ] || skip "no $BIN/archip-extstorage"
SWIFTC=${SWIFTC:-$(command -v swiftc || true)}
[ -n "$SWIFTC" ] || skip "no swiftc for the Foundation one-liner"

rm -rf "$WORK"
mkdir -p "$WORK/store"
printf 'import Foundation\nprint("hello from Foundation, \\(ProcessInfo.processInfo.processIdentifier)")\n' > "$WORK/hello.swift"
"$SWIFTC" -O -o "$WORK/hello" "$WORK/hello.swift" 2>"$WORK/swiftc.log" || skip "swiftc failed: $(head -1 "$WORK/swiftc.log")"
# A store for verify to open, made by the provider's sibling.
[ -x "$BIN/archip" ] || skip "no $BIN/archip to make a store"
"$BIN/archip" --store "$WORK/store" create bench-vol --size 8M >/dev/null
printf '[store]\npath = %s\n[node]\nname = bench\nruntime_dir = %s\n' "$WORK/store" "$WORK/run" > "$WORK/archip.conf"
scripts/install-extstorage.sh "$WORK/provider" "$BIN" "$WORK/archip.conf"

python3 - "$WORK" "$BIN" "$RUNS" <<'PY' | while IFS= read -r line; do say "$line"; done
import os, statistics, sys, time
work, bindir, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
actions = "create attach detach remove grow setinfo verify snapshot open close".split()
ganeti = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "EXTP_PROVIDER": "archipelago", "EXTP_ACCESS": "kernelspace"}
progs = [("foundation one-liner", [f"{work}/hello"], {"PATH": "/usr/bin:/bin"}, 0)]
progs.append(("archip-extstorage --help", [f"{bindir}/archip-extstorage", "--help"], ganeti, 2))
for a in actions:
    # verify needs no VOL_NAME: it opens the store and succeeds, a whole call.
    progs.append((f"{a}" + (" (opens the store)" if a == "verify" else " (start)"), [f"{work}/provider/{a}"], ganeti, 0 if a == "verify" else 2))
null = os.open(os.devnull, os.O_RDWR)
def once(argv, env, want):
    t = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)])
    _, status = os.waitpid(pid, 0)
    dt = (time.perf_counter_ns() - t) / 1e6
    code = os.waitstatus_to_exitcode(status)
    if code != want:
        sys.exit(f"startup: {' '.join(argv)} exited {code}, expected {want}")
    return dt
for name, argv, env, want in progs:          # warm the page cache
    for _ in range(5): once(argv, env, want)
times = {p[0]: [] for p in progs}
for _ in range(runs):                        # alternate, so drift hits all alike
    for name, argv, env, want in progs:
        times[name].append(once(argv, env, want))
base = statistics.median(times["foundation one-liner"])
worst = 0.0
print(f"startup: {runs} runs each, alternating; median / p95 in ms; ratio = median / the one-liner's (goal <= 2.0)")
for name, *_ in progs:
    t = sorted(times[name]); med = statistics.median(t); p95 = t[int(len(t) * 0.95) - 1]
    ratio = med / base
    if name != "foundation one-liner": worst = max(worst, ratio)
    print(f"startup: {name:32s} {med:6.2f} / {p95:6.2f} ms  ratio {ratio:4.2f}")
print(f"startup: worst ratio {worst:.2f}: goal {'met' if worst <= 2.0 else 'not met'}")
PY
