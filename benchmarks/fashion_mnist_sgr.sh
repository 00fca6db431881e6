#!/usr/bin/env bash
# SGR's cheaper approximations on Fashion-MNIST (issue 16): time vs accuracy of the penalty every m
# steps (m = 1 is exact SGR) and on a quarter of each batch, against bp and dgl, 3 seeds.
# The narrow conv net and linear heads of benchmarks/mnist1d_accuracy.sh, on 1x28x28 images.
# Needs the Fashion-MNIST idx files (--dataset fashion-mnist; see README, Datasets).
# Usage: benchmarks/fashion_mnist_sgr.sh [OUT_DIR] [extra bench flags, e.g. --dataset-kwargs train=10000 test=2000]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench-fashion-mnist-sgr-every}
shift || true
ll=${LOCALLEARN:-.venv/bin/locallearn}
methods=bp,dgl
for m in 1 2 4 8; do methods+=",sgr:sgr-lambda=100:sgr-every=$m"; done
methods+=",sgr:sgr-lambda=100:sgr-subbatch=0.25"
$ll bench --dataset fashion-mnist --model cnn1d --model-kwargs "widths=(16,16,32,32,64,64,64,64)" --head linear \
  --modules 4,8 --epochs 10 --seeds 0,1,2 --no-progress --no-measure --out "$out" --methods "$methods" "$@"
