#!/usr/bin/env bash
# Peak activation bytes, FLOPs and step-time ratios of the method issues, measured side by side
# in one bench per line: CIFAR-sized generated data (3x32x32), batch 128, 2 threads, a few steps.
# Usage: benchmarks/cpu_cost.sh spine|sgr|sgr-interleaved|auglocal|backlink|backlink-recompute|fwdgrad|pipeline [OUT_DIR]
# Run on a quiet machine: step times are medians, but the ratios still move with other load.
# Env: HEADS (pipeline: the auxiliary heads to run, default "conv linear"); TIMING_ROUNDS (default 5;
# 0 = memory and FLOPs only, step times then are the runs' own medians).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?spine|sgr|sgr-interleaved|auglocal|backlink|backlink-recompute|fwdgrad|pipeline}
out=${2:-runs/bench-cost-$what}
ll=${LOCALLEARN:-.venv/bin/locallearn}
img=(--dataset synthetic --dataset-kwargs shape=3x32x32 train=1280 test=128 --batch-size 128 --threads 2
     --no-progress --epochs 1 --seeds 0 --timing-rounds "${TIMING_ROUNDS:-5}")  # one seed: cost, not accuracy

case $what in
  spine)  # issue 2: dgl vs bp at K=16 with both heads; activation memory of dgl/checkpoint on ResNet-110
    for head in conv linear; do
      $ll bench "${img[@]}" --model resnet32 --methods bp,dgl --modules 16 --head $head --max-steps 8 --out "$out/resnet32-$head"
    done
    $ll bench "${img[@]}" --model resnet110 --methods bp,dgl,checkpoint --modules 4,16 --max-steps 2 --out "$out/resnet110" ;;
  sgr)  # issue 3: sgr / bp at ResNet-32, K=16 and K=3, with the paper's conv heads and with linear heads
    for head in conv linear; do
      $ll bench "${img[@]}" --model resnet32 --methods bp,dgl,sgr --modules 3,16 --head $head --max-steps 6 --out "$out/resnet32-$head"
    done ;;
  sgr-interleaved)  # issues 12, 16: sgr / bp and dgl / bp at ResNet-32 K=16, steps interleaved in one process,
    # median wall and CPU time; the cheaper approximations beside exact sgr
    mkdir -p "$out"
    PYTHONPATH=. ${PYTHON:-.venv/bin/python} benchmarks/interleaved_sgr.py --threads 2 --rounds 9 --heads linear,conv \
      --methods bp,dgl,sgr,sgr:sgr-every=2,sgr:sgr-every=4,sgr:sgr-every=8,sgr:sgr-subbatch=0.25 --json "$out/interleaved.json" ;;
  auglocal)  # issue 4: layer-wise, d=3 in the authors' layout (the default) and the former one; memory on ResNet-110, time on ResNet-32
    $ll bench "${img[@]}" --model resnet110 --split layer --methods bp,dgl,auglocal:aux-depth=3,auglocal:aux-depth=3:aux-layout=layer --max-steps 1 --out "$out/resnet110"
    $ll bench "${img[@]}" --model resnet32 --split layer --methods bp,dgl,auglocal:aux-depth=3,auglocal:aux-depth=3:aux-layout=layer --max-steps 8 --out "$out/resnet32" ;;
  backlink)  # issue 5: l = 1..4 over dgl at K = 2, 4, 8, 16 (l must fit the smallest linked module)
    for model in resnet32 resnet110; do
      if [ $model = resnet32 ]; then layers=16 steps=8; else layers=55 steps=4; fi
      for k in 2 4 8 16; do
        methods=dgl
        for l in 1 2 3 4; do
          if (( l <= layers / k )); then methods+=",backlink:link-length=$l"; fi
        done
        $ll bench "${img[@]}" --model $model --head conv --methods "$methods" --modules $k --max-steps $steps \
          --out "$out/$model-k$k"
      done
    done ;;
  fwdgrad)  # issues 6/16: ResNet-18 (CIFAR stem) in 8 blocks: genuine forward mode vs emulation vs bp.
    # jvp at the default per-sample x per-tensor granularity would take one JVP per sample and tensor
    # through the BNs (hundreds per block), so the jvp lines project per block, in one sweep (the
    # default) and per block; the emulation runs both granularities.
    $ll bench --dataset synthetic --dataset-kwargs shape=3x32x32 train=320 test=64 --batch-size 32 --threads 2 \
      --no-progress --epochs 1 --seeds 0 --model resnet18 --model-kwargs stem=cifar --modules 8 --head fg-cnn --max-steps 3 \
      --methods bp,dgl,fwdgrad:fwd-mode=jvp:projection-granularity=block,fwdgrad:fwd-mode=jvp:projection-granularity=block:jvp-schedule=per-block,fwdgrad:fwd-mode=emulate:projection-granularity=block,fwdgrad:fwd-mode=emulate \
      --target global --guess local --space weight --out "$out/resnet18" ;;
  pipeline)  # issues 7 and 16: dgl throughput, async pipeline of 2 processes x 1 thread vs 1 process x 1 and 2 threads,
    # the even split against --split balanced (cut by a profile of the step), each K's two splits back to back
    for head in ${HEADS:-conv linear}; do  # HEADS=conv: one of the two
      $ll bench-pipeline --methods dgl --model resnet32 --dataset synthetic --dataset-kwargs shape=3x32x32 train=5120 \
        test=128 --batch-size 128 --modules 2,4 --splits even balanced --processes 2 --max-steps 40 --head $head \
        --no-progress --out "$out/$head"
    done ;;
  backlink-recompute)  # issue 5: the kept graph against --link-recompute at many modules
    for spec in "resnet32 8 8" "resnet110 16 4"; do
      set -- $spec
      $ll bench "${img[@]}" --model $1 --head conv --modules $2 --max-steps $3 --out "$out/$1-k$2" --methods \
        dgl,backlink:link-length=1,backlink:link-length=1:link-recompute=true,backlink:link-length=2,backlink:link-length=2:link-recompute=true
    done ;;
  *) echo "unknown benchmark $what; choose spine, sgr, sgr-interleaved, auglocal, backlink, backlink-recompute, fwdgrad or pipeline" >&2; exit 2 ;;
esac
