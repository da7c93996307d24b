# Sourced by the bench scripts that compare read jobs on several targets
# against a plain loop device (bench-fuse-ceiling.sh, bench-nbd-reference.sh).
# The sourcing script sets BENCH_NAME first, then ROUNDS, TARGETS (the first
# is "plain") and defines run_target NAME, which appends "NAME.JOB bytes/s
# iops" lines to $OUT for the jobs seqread and randread.

# Before sourcing: BENCH_NAME (the results' prefix and the work folder's name).
BENCH_DIR=${BENCH_DIR:-$PWD/.bench}
RESULTS=$BENCH_DIR/results.txt
WORK=$BENCH_DIR/$BENCH_NAME

say() { printf '%s\n' "$*"; mkdir -p "$BENCH_DIR"; printf '%s\n' "$*" >> "$RESULTS"; }
skip() { say "$BENCH_NAME: skipped: $*"; exit 0; }

# A fresh work folder, with a store and a node runtime folder of its own for
# archip (whatever ARCHIP_* the caller had).
bench_workdir() {
    rm -rf "$WORK"
    mkdir -p "$WORK"
    export ARCHIP_STORE="$WORK/store" ARCHIP_NODE=bench ARCHIP_RUNTIME_DIR="$WORK/run"
    unset ARCHIP_CONFIG || true
}

# Runs every target once per round, the order rotated from round to round
# (the page cache and the disk carry state from one run to the next, so no
# target may always come first). Round R's results: $WORK/round.R.
run_rounds() {
    round=1
    while [ "$round" -le "$ROUNDS" ]; do
        OUT="$WORK/round.$round"
        : > "$OUT"
        order=$TARGETS
        i=0
        while [ $i -lt $((round - 1)) ]; do order="${order#* } ${order%% *}"; i=$((i + 1)); done
        for t in $order; do run_target "$t"; done
        round=$((round + 1))
    done
}

# report PREFIX [GOAL_SEQ GOAL_RAND]: per job and target, the median result
# and the median of the per-round ratios against plain [min-max].
report() {
    prefix=$1 gseq=${2:-} grand=${3:-}
    [ -f "$WORK/skipped" ] && sort -u "$WORK/skipped" | while read -r l; do say "$prefix: skipped $l"; done
    python3 - "$WORK" "$ROUNDS" "$TARGETS" "$prefix" "$gseq" "$grand" <<'PY' | while IFS= read -r line; do say "$line"; done
import statistics, sys
work, rounds, targets, prefix, gseq, grand = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4], sys.argv[5], sys.argv[6]
res = {}
for r in range(1, rounds + 1):
    for line in open(f"{work}/round.{r}"):
        name, bw, iops = line.split()
        res.setdefault(name, []).append((int(bw), int(iops)))
for job, idx, goal in (("seqread", 0, gseq), ("randread", 1, grand)):
    base = res.get(f"plain.{job}", [])
    for t in targets:
        vals = res.get(f"{t}.{job}", [])
        if not vals or len(vals) != len(base):
            continue
        ratios = [v[idx] / b[idx] for v, b in zip(vals, base) if b[idx] > 0]
        med = statistics.median(v[idx] for v in vals)
        unit = f"{med / 1e6:.0f} MB/s" if idx == 0 else f"{med / 1e3:.1f}k IOPS"
        tail = ""
        if t != "plain":
            tail = f" ratio {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]" + (f" (goal {goal})" if goal else "")
        print(f"{prefix}: {job:8} {t:15} {unit:>12}{tail}")
PY
}
