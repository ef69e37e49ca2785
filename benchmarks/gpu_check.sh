#!/usr/bin/env bash
# GPU check: on a machine with a CUDA device, in under 5 minutes, run
#   1. the tests marked `gpu`;
#   2. `specroute bench` at the `bench` profile on CUDA in bf16 (compiled cases included);
#   3. the paper profile's first ~50 controller steps (G3 util/rank arm, one seed, a short backbone);
# and print tokens/s, MFU, peak memory and the bf16-vs-fp32 agreement of the oracle labels.
#
# Usage: benchmarks/gpu_check.sh [OUT]   (OUT defaults to a fresh temporary folder)
# Exit codes: 0 all ran (or no CUDA device: prints "no CUDA device: ..." and does nothing else);
#             1 a step failed.
set -euo pipefail

PY="${PYTHON:-python}"
status=0
reason=$("$PY" -c 'import sys, torch
if not torch.cuda.is_available():
    print("torch %s sees none (CUDA build: %s)" % (torch.__version__, torch.version.cuda or "none"))
    sys.exit(3)
print(torch.cuda.get_device_name(0))' 2>&1) || status=$?
if [ "$status" -eq 3 ]; then
  echo "no CUDA device: ${reason}; nothing to check (run this on a machine with an NVIDIA GPU)"
  exit 0
elif [ "$status" -ne 0 ]; then
  echo "gpu check: cannot run ${PY} with torch: ${reason}" >&2
  exit 1
fi
echo "CUDA device: ${reason}"
OUT="${1:-$(mktemp -d /tmp/specroute_gpu_check.XXXXXX)}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

echo "== 1/3 tests marked gpu"
"$PY" -m pytest -q -m gpu tests

echo "== 2/3 specroute bench, profile bench, CUDA bf16"
timeout 150 specroute bench specs/a3.yaml --profile bench --device cuda --repeats 5 --out "$OUT/bench" --overwrite
"$PY" - "$OUT/bench/summary.json" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"device {s['environment']['device_name']} ({s['environment']['dtype']}); peak {s['peak']['source']}")
for c in s["cases"]:
    if c["status"] == "ok" and c["kind"] == "train":
        mfu = "—" if c.get("mfu") is None else f"{c['mfu']:.1%}"
        print(f"  {c['name']:<24} {c['tokens_per_s']:>12,.0f} tok/s  MFU {mfu:>6}  peak {c['peak_mb']:,.0f} MB")
for t in s["targets"]:
    print(f"  target {t['id']}: {t['status']} ({t['note'][:120]})")
PYEOF

echo "== 3/3 paper profile: first 50 controller steps (G3 util/rank, seed 0)"
timeout 120 specroute run specs/a3.yaml --profile paper --yes --device cuda --arm G3_utilrank --seed 0 \
  --set train.steps=50 --set train.eval_every=25 --set train.eval_batches=2 --set train.checkpoint_every=50 \
  --set backbone.train.steps=20 --set backbone.train.eval_every=20 --set backbone.train.eval_batches=1 \
  --set 'data={kind: embedded}' --set model.vocab_size=256 \
  --cache-dir "$OUT/cache" --out "$OUT/paper50" --overwrite
"$PY" - "$OUT/paper50/summary.json" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
for arm, a in s["arms"].items():
    for seed, r in a["seeds"].items():
        sp = r.get("speed") or {}
        mfu = "—" if sp.get("mfu") is None else f"{sp['mfu']:.1%}"
        print(f"  {arm} seed {seed}: {sp.get('tokens_per_s') or 0:,.0f} tok/s, MFU {mfu} ({sp.get('peak_source')}); "
              f"final LM {r['final_lm']:.3f}")
PYEOF
echo "gpu check done: $OUT"
