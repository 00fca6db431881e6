#!/usr/bin/env bash
# Fashion-MNIST benchmarks (issues 13, 16): a paper's table reproduced on real images, the
# leaderboard of every method, and SGR's cheaper approximations.
# Usage: [SCALE=cpu|paper] benchmarks/fashion_mnist.sh fwdgrad|leaderboard|bpfree|sgr-every [OUT_DIR]
#
# Needs the idx files: apt-get install dataset-fashion-mnist (or --data-dir; README, Data).
# SCALE=cpu (default) fits a 2-core CPU: narrower networks, a training subset of TRAIN samples
# (default 4000, seeded, every class), few epochs, 2 seeds. SCALE=paper runs the same grid
# unchanged but for the scale: full width, all 60000 training images, the paper's epochs and batch
# size (a GPU). In both, 10 % of the training samples are held out and every lr is chosen on them
# (never on the test set); the table's test top-1 is that of the chosen lr.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?fwdgrad|leaderboard|bpfree|sgr-every}
scale=${SCALE:-cpu}
out=${2:-runs/bench-fashion-mnist-$what-$scale}
ll=${LOCALLEARN:-.venv/bin/locallearn}
case $scale in
  cpu)   data=(--dataset fashion-mnist --dataset-kwargs "train=${TRAIN:-4000}")
         run=(--seeds 0,1 --threads 2 --no-progress --val-split 0.1)
         resnet18=(--model-kwargs stem=cifar width=8); resnet18_plain=(--model-kwargs stem=cifar width=8 plain=true)
         resnet20=(--model resnet20); epochs_fwd=3; epochs_board=4; batch=128 ;;
  paper) data=(--dataset fashion-mnist)
         run=(--seeds 0,1,2 --no-progress --val-split 0.1)
         resnet18=(--model-kwargs stem=cifar); resnet18_plain=(--model-kwargs stem=cifar plain=true)
         resnet20=(--model resnet20); epochs_fwd=100; epochs_board=100; batch=256 ;;
  *) echo "unknown SCALE=$scale; choose cpu or paper" >&2; exit 2 ;;
esac

case $what in
  fwdgrad)  # the forward-gradient paper's Tables 7 (global target) and 9 (local target), ResNet-18 (CIFAR
    # stem), 8 blocks (with skips) and 16 blocks (no skips, one conv each, the first block two layers),
    # weight and activity space, the authors' estimator (per sample x per tensor, emulated). Guesses'
    # heads: the paper's CNN / MLP / linear auxiliaries (fg-*); NTK re-initialises the CNN head.
    # Local guesses, local learning and end-to-end choose their lr in {0.02, 0.1}; random and NTK
    # guesses in {0.005, 0.02} (the paper gives them smaller lrs, appendix A.3).
    for blocks in 8 16; do
      if [ "$blocks" = 8 ]; then model=(--model resnet18 "${resnet18[@]}"); else model=(--model resnet18 "${resnet18_plain[@]}"); fi
      big="0.02|0.1"; small="0.005|0.02"
      methods="bp:lr=$big,dgl:head=fg-cnn:lr=$big"
      for space in weight activity; do
        for guess in local:head=fg-cnn local:head=fg-mlp local:head=fg-linear; do
          methods+=",fwdgrad:target=global:space=$space:guess=$guess:lr=$big"
        done
        for guess in ntk:head=fg-cnn gaussian rademacher; do
          methods+=",fwdgrad:target=global:space=$space:guess=$guess:lr=$small"
        done
        methods+=",fwdgrad:target=local:space=$space:guess=gaussian:head=fg-cnn:lr=$small"
      done
      $ll bench "${data[@]}" "${model[@]}" "${run[@]}" --out "$out/blocks$blocks" --modules "$blocks" --epochs $epochs_fwd \
        --batch-size $batch --head fg-cnn --fwd-mode emulate --no-measure --timing-rounds 0 --methods "$methods"
    done ;;
  leaderboard)  # every method on ResNet-20 at K=4 and one module per layer (K=10), lr chosen on validation
    # in {0.02, 0.1}; memory, FLOPs and time ratios to bp from the same bench (interleaved timing)
    methods="bp,checkpoint,greedy,dgl,reforward,sgr,auglocal,infopro,predsim,backlink,fwdgrad:head=fg-cnn"
    $ll bench "${data[@]}" "${resnet20[@]}" "${run[@]}" --out "$out/k4" --modules 4 --epochs $epochs_board --batch-size $batch \
      --head linear --lr-grid 0.02,0.1 --methods "$methods"
    # one module per layer: checkpoint would be BP again, greedy trains 10 phases; both left to K=4
    methods="bp,dgl,reforward,sgr,auglocal,infopro,predsim,backlink,fwdgrad:head=fg-cnn"
    $ll bench "${data[@]}" "${resnet20[@]}" "${run[@]}" --out "$out/layerwise" --modules 10 --epochs $epochs_board \
      --batch-size $batch --head linear --lr-grid 0.02,0.1 --methods "$methods" ;;
  bpfree)  # the BP-free family on a 4-layer MLP, one module per layer (SGR Table 4's setting)
    $ll bench "${data[@]}" "${run[@]}" --out "$out" --model mlp --split layer --epochs $((epochs_board * 2)) --batch-size $batch \
      --lr-grid 0.005,0.02,0.1 --methods bp,fa,dfa,drtp,pepita,layerwise-bpfree,sgr-bpfree ;;
  sgr-every)  # SGR's approximations: the penalty every m steps (m = 1 is exact SGR), on a quarter of each batch
    methods=bp,dgl
    for m in 1 2 4 8; do methods+=",sgr:sgr-lambda=100:sgr-every=$m"; done
    methods+=",sgr:sgr-lambda=100:sgr-subbatch=0.25"
    $ll bench "${data[@]}" "${run[@]}" --out "$out" --model cnn1d --model-kwargs "widths=(16,16,32,32,64,64,64,64)" --head linear \
      --modules 4,8 --epochs $epochs_board --batch-size $batch --lr-grid 0.02,0.1 --methods "$methods" ;;
  *) echo "unknown benchmark $what; choose fwdgrad, leaderboard, bpfree or sgr-every" >&2; exit 2 ;;
esac
