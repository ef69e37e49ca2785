#!/usr/bin/env bash
# The smoke A3 study (backbone + 4 arms x 3 seeds) from an empty cache, timed for two commits side by side:
# the rounds alternate old, new, old, new, ... so that a machine whose speed drifts (a shared one) slows both
# alike. Each round prints the wall seconds and the machine-wide busy CPU seconds (/proc/stat, all
# processes: the study's workers and fork server included); the end prints the median of each and the
# ratio old / new.
#
# Usage: benchmarks/smoke_study.sh OLD_REF [NEW_REF] [ROUNDS]
#   OLD_REF, NEW_REF: git revisions of this repository (NEW_REF defaults to the working tree as it is);
#   ROUNDS: rounds per commit (default 3). Both run with this environment's python and packages
#   (PYTHONPATH set to a checkout of each; the `specroute` command's entry, `specroute.cli.main`, where the
#   commit has one), so install specroute's dependencies first.
set -euo pipefail

old=${1:?usage: benchmarks/smoke_study.sh OLD_REF [NEW_REF] [ROUNDS]}
new=${2:-}
rounds=${3:-3}
PY="${PYTHON:-python}"
repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d "${TMPDIR:-/tmp}/smoke_study.XXXX")
trap 'git -C "$repo" worktree remove --force "$work/old" >/dev/null 2>&1 || true;
      [ -n "$new" ] && git -C "$repo" worktree remove --force "$work/new" >/dev/null 2>&1 || true' EXIT

git -C "$repo" worktree add --detach -q "$work/old" "$old"
if [ -n "$new" ]; then
    git -C "$repo" worktree add --detach -q "$work/new" "$new"
    new_dir="$work/new"
else
    new_dir="$repo"
fi

busy() { awk '/^cpu /{printf "%.2f", ($2 + $3 + $4 + $7 + $8) / 100}' /proc/stat; }

run() {  # run LABEL CHECKOUT ROUND -> "wall cpu"
    local out="$work/$1.$3"
    local b0 t0 b1 t1
    b0=$(busy); t0=$(date +%s.%N)
    (cd "$2" && PYTHONPATH="$2" "$PY" -c "import specroute.cli as c; (getattr(c, 'main', None) or c.app)()" run specs/a3.yaml \
        --profile smoke --cache-dir "$out/cache" --out "$out/study" > "$out.log" 2>&1) \
        || { echo "$1 round $3 failed; see $out.log" >&2; exit 1; }
    t1=$(date +%s.%N); b1=$(busy)
    echo "$(echo "$t1 - $t0" | bc) $(echo "$b1 - $b0" | bc)"
}

echo "old: $(git -C "$work/old" rev-parse --short HEAD)  new: $([ -n "$new" ] && git -C "$new_dir" rev-parse --short HEAD || echo "working tree $(git -C "$repo" rev-parse --short HEAD)")  rounds: $rounds"
: > "$work/old.txt"; : > "$work/new.txt"
for i in $(seq 1 "$rounds"); do
    for which in old new; do
        dir=$([ "$which" = old ] && echo "$work/old" || echo "$new_dir")
        mkdir -p "$work/$which.$i"
        read -r wall cpu < <(run "$which" "$dir" "$i")
        echo "$wall $cpu" >> "$work/$which.txt"
        printf "round %d %-3s wall %6.1f s  cpu %6.1f s\n" "$i" "$which" "$wall" "$cpu"
    done
done
"$PY" - "$work/old.txt" "$work/new.txt" <<'EOF'
import statistics, sys
old, new = ([list(map(float, line.split())) for line in open(p)] for p in sys.argv[1:3])
med = lambda rows, i: statistics.median(r[i] for r in rows)
for i, name in enumerate(("wall", "cpu")):
    print(f"median {name}: old {med(old, i):.1f} s, new {med(new, i):.1f} s, old/new {med(old, i) / med(new, i):.2f}x")
EOF
