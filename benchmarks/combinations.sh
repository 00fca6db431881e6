#!/usr/bin/env bash
# Which combinations help (issue 15): the pairs a researcher would try first, each beside its parts,
# in one bench, so that accuracy, activation memory, FLOPs and (interleaved) time are side by side
# with ratios to bp.
# Usage: benchmarks/combinations.sh mnist1d|fashion-mnist [OUT_DIR]
#
#   parts   bp, dgl, sgr, backlink, auglocal, infopro, fwdgrad (a local guess from the --head)
#   pairs   auglocal+sgr, auglocal+backlink, infopro+sgr, infopro+backlink, backlink+sgr,
#           fwdgrad with AugLocal's auxiliary nets as the guesses (--guess-head auglocal)
#
# One module per layer (--split layer), the regime where local learning loses most to bp and
# AugLocal's paper trains (its authors' layout merges the top layers: K = L - d + 1). Default
# options of every part: AugLocal d = 3, BackLink l = 1, alpha = 0.25, InfoPro's weights; every
# SGR row chooses lambda (SGR_LAMBDA, a grid a|b) together with its lr on validation accuracy (10 %
# of the training set, never the test set); every row chooses its lr from LR_GRID.
#   mnist1d        the narrow 8-layer cnn1d of mnist1d_accuracy.sh, linear heads, 10 epochs; minutes
#   fashion-mnist  ResNet-20 of width 8 on a seeded TRAIN-image training subset (default 5000), linear heads, 4 epochs,
#                  the idx files installed (apt-get install dataset-fashion-mnist); hours on 2 CPU cores
# Env: SEEDS (default 0,1,2), EPOCHS, LR_GRID, SGR_LAMBDA (default 10|100), TIMING_ROUNDS (default 3),
# TRAIN and THREADS (fashion-mnist; THREADS=1 when two benchmarks share the cores), LOCALLEARN (the
# command). A smoke run of either case: SEEDS=0 EPOCHS=1
# LR_GRID=0.05 SGR_LAMBDA=10 TIMING_ROUNDS=1 (and TRAIN=500).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?mnist1d|fashion-mnist}
out=${2:-runs/bench-combinations-$what}
ll=${LOCALLEARN:-.venv/bin/locallearn}
lam=${SGR_LAMBDA:-10|100}

methods="bp,dgl,sgr:sgr-lambda=$lam,backlink,auglocal,infopro,fwdgrad"
methods+=",auglocal:coupling=sgr:sgr-lambda=$lam,auglocal:coupling=backlink"
methods+=",infopro:coupling=sgr:sgr-lambda=$lam,infopro:coupling=backlink"
methods+=",backlink:coupling=backlink+sgr:sgr-lambda=$lam"
methods+=",fwdgrad:guess-head=auglocal"
common=(--split layer --head linear --seeds "${SEEDS:-0,1,2}" --no-progress --val-split 0.1
        --timing-rounds "${TIMING_ROUNDS:-3}" --methods "$methods" --out "$out")

case $what in
  mnist1d)
    $ll bench --model cnn1d --model-kwargs "widths=(16,16,32,32,64,64,64,64)" --epochs "${EPOCHS:-10}" --threads 1 \
      --lr-grid "${LR_GRID:-0.02,0.05,0.1}" "${common[@]}" ;;
  fashion-mnist)
    $ll bench --dataset fashion-mnist --dataset-kwargs "train=${TRAIN:-5000}" --model resnet20 --model-kwargs width=8 \
      --epochs "${EPOCHS:-4}" --batch-size 128 --threads "${THREADS:-2}" --lr-grid "${LR_GRID:-0.02,0.1}" "${common[@]}" ;;
  *) echo "unknown benchmark $what; choose mnist1d or fashion-mnist" >&2; exit 2 ;;
esac
