#!/usr/bin/env bash
# Nøkland & Eidnes (2019)'s Fashion-MNIST MLP row (anokland/local-loss, README "Results on
# Fashion-MNIST", run_experiments.sh lines 15-18), reproduced with the authors' settings (issue 21).
# Usage: [EPOCHS=200] [SEEDS=0,1,2] [THREADS=1] benchmarks/local_loss.sh reproduce [OUT_DIR]
#        (add --resume after OUT_DIR's bench exists: RESUME=1 benchmarks/local_loss.sh reproduce)
#
# Their command: train.py --model mlp --dataset FashionMNIST --dropout 0.025 --lr 5e-4 --num-layers 3
# --epochs 200 --lr-decay-milestones 100 150 175 188 [--backprop | --loss-sup pred | --loss-sup sim
# --nonlin leakyrelu | --nonlin leakyrelu (predsim, the default)]; defaults: 1024 hidden units, batch
# 128, Adam, no weight decay, decay factor 0.25, beta 0.99, BN before each nonlinearity, 2-pixel
# jitter + horizontal flip. Here: mlp depth=3 width=1024 bias=true dropout=0.025 output_layer=true
# (their Net: the output layer on the detached last hidden layer, one module per hidden layer + the
# output layer with --split layer), method predsim with beta 0 (pred), 1 (sim), 0.99 (predsim).
# All 60,000 training and 10,000 test images; their hyper-parameters, none tuned.
# EPOCHS < 200 shortens the schedule, milestones scaled in proportion (stated with the numbers);
# TRAIN=N (a seeded subset) is for smoke checks of this script only.
# Needs the idx files: apt-get install dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?reproduce}
ll=${LOCALLEARN:-.venv/bin/locallearn}
epochs=${EPOCHS:-200}
milestones=$(python3 -c "e=$epochs; print(','.join(f'{e*m/200:g}' for m in (100, 150, 175, 188)))")
resume=(); [ -n "${RESUME:-}" ] && resume=(--resume)
pred="predsim:predsim-zero-output=true"  # their output layer starts at zero under local losses

case $what in
  reproduce)
    out=${2:-results/fm-mlp-localloss}
    subset=(); [ -n "${TRAIN:-}" ] && subset=(--dataset-kwargs "train=$TRAIN" test=1000)  # smoke checks only
    $ll bench "${resume[@]}" --out "$out" --dataset fashion-mnist "${subset[@]}" --model mlp \
      --model-kwargs depth=3 width=1024 bias=true dropout=0.025 output_layer=true --split layer \
      --optimizer adam --lr 5e-4 --weight-decay 0 --batch-size 128 --epochs "$epochs" \
      --sched multistep --lr-milestones "$milestones" --lr-decay 0.25 --augment crop-flip --crop-padding 2 \
      --seeds "${SEEDS:-0,1,2}" --threads "${THREADS:-1}" --no-progress --checkpoint-every 200 \
      --methods "bp,$pred:predsim-beta=0,$pred:predsim-beta=1:model.activation=leakyrelu,$pred:model.activation=leakyrelu" ;;
  *) echo "unknown benchmark $what; choose reproduce" >&2; exit 2 ;;
esac
