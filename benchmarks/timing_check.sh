#!/usr/bin/env bash
# Self-check of bench's interleaved timing (issue 12): two identical configurations (dgl, and dgl
# given its default option explicitly) timed while another process loads the CPU for part of the
# bench. The time ratio of the two must stay within 0.9-1.1; the script prints it and exits 1 if not.
# Usage: benchmarks/timing_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench-timing-check}
ll=${LOCALLEARN:-.venv/bin/locallearn}
py=${PYTHON:-.venv/bin/python}
rm -rf "$out"
# a CPU burner that starts a few seconds in and runs for a while: part of the timing rounds are loaded
( sleep 8; timeout 12 "$py" -c "while True: pass" ) &
burner=$!
$ll bench --dataset synthetic --dataset-kwargs shape=3x32x32 train=512 test=128 --batch-size 128 --threads 2 \
  --no-progress --no-measure --max-steps 1 --model resnet32 --modules 4 --head linear \
  --methods dgl,dgl:reforward=false --timing-rounds 15 --timing-steps 2 --out "$out"
wait $burner || true
"$py" - "$out/bench.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
a, b = rows
wall, cpu = b["step_seconds"] / a["step_seconds"], b["cpu_seconds"] / a["cpu_seconds"]
print(f"identical configurations, interleaved: wall ratio {wall:.3f}, CPU-time ratio {cpu:.3f} (must be in 0.9-1.1)")
sys.exit(0 if 0.9 <= wall <= 1.1 and 0.9 <= cpu <= 1.1 else 1)
EOF
