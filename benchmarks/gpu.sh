#!/usr/bin/env bash
# The GPU benchmark (issue 16): CUDA peak memory and step-time ratios to bp of bp, checkpoint, dgl,
# sgr, auglocal, backlink and fwdgrad on ResNet-32 and ResNet-110 at K=4 and K=16, in float32 and
# with --amp bf16, on generated CIFAR-shaped data (no download). Sized to run in under 8 minutes on
# one H100/H200: each bench trains every configuration a few steps (peak memory, FLOPs, activation
# bytes) and times them interleaved in one process (bench's timing rounds). Prints one table per
# bench and writes OUT/summary.md with all of them.
# Usage: benchmarks/gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench-gpu}
ll=${LOCALLEARN:-.venv/bin/locallearn}
py=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no GPU" >&2; exit 2; }
data=(--dataset synthetic --dataset-kwargs shape=3x32x32 train=2048 test=256 --batch-size 128 --device cuda
      --no-progress --epochs 1 --max-steps 3 --timing-rounds 5 --timing-steps 3 --seeds 0)
methods=bp,checkpoint,dgl,sgr,auglocal,backlink,fwdgrad:fwd-mode=jvp:projection-granularity=block
for model in resnet32 resnet110; do
  for amp in none bf16; do
    flags=(); [ "$amp" = bf16 ] && flags=(--amp bf16)
    $ll bench "${data[@]}" "${flags[@]}" --model $model --modules 4,16 --head linear --methods "$methods" \
      --out "$out/$model-$amp"
  done
done
"$py" - "$out" <<'EOF'
import json, sys, pathlib, datetime
out = pathlib.Path(sys.argv[1])
lines = [f"GPU benchmark, {datetime.date.today()}: ratios to bp in each bench (interleaved timing)", ""]
for path in sorted(out.glob("*/bench.json")):
    rows = json.loads(path.read_text())["rows"]
    lines += [f"### {path.parent.name}", "", "| method | K | step ms | x time | CUDA peak MiB | x peak | act MiB |",
              "|---|---|---|---|---|---|---|"]
    bp = rows[0]
    for r in rows:
        peak = r["peak_memory_bytes"]
        lines.append(f"| {r['method']} | {r['modules']} | {1000 * r['step_seconds']:.1f} | {r['time_ratio']:.2f} | "
                     f"{peak / 2**20:.0f} | {peak / bp['peak_memory_bytes']:.2f} | {r['peak_activation_bytes'] / 2**20:.0f} |")
    lines.append("")
(out / "summary.md").write_text("\n".join(lines))
print("\n".join(lines))
EOF
