#!/usr/bin/env bash
# AugLocal: forward GMACs of the primary network plus all auxiliary networks (the paper's Table 7)
# and the share of auxiliary FLOPs that pyramidal depth saves (Figure 5), in the authors' layout
# (the default) and in the former one-auxiliary-net-per-layer layout. FLOP counts: deterministic,
# a minute or two on one CPU core. d is the paper's depth (copied layers + the classifier).
# Usage: benchmarks/auglocal_flops.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench-auglocal-flops}
ll=${LOCALLEARN:-.venv/bin/locallearn}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one-sample dry runs: more threads only add overhead
mkdir -p "$out"
for layout in authors layer; do
  # Table 7: ResNet-110, d = 2..6 at tau = 0.5 (the analysis' defaults)
  $ll analyze aux-flops --model resnet110 --layout $layout --json "$out/table7-resnet110-$layout.json"
  # Figure 5: ResNet-110, d = 5..9, tau = 0.6..1.0 (saving against tau = 0)
  $ll analyze aux-flops --model resnet110 --layout $layout --aux-depth 5,6,7,8,9 \
    --pyramid-decay 0.6,0.7,0.8,0.9,1.0 --json "$out/figure5-resnet110-$layout.json"
  # ResNet-32, d = 2..6, without pyramid and at tau = 0.5, 1.0
  $ll analyze aux-flops --model resnet32 --layout $layout --aux-depth 2,3,4,5,6 --pyramid-decay 0,0.5,1.0 \
    --json "$out/resnet32-$layout.json"
done
