#!/usr/bin/env bash
# Fashion-MNIST benchmarks (issues 13, 16): a paper's table reproduced on real images, the
# leaderboard of every method, and SGR's cheaper approximations.
# Usage: [SCALE=cpu|paper] benchmarks/fashion_mnist.sh fwdgrad|leaderboard|bpfree|sgr-every [OUT_DIR]
#
# Needs the idx files: apt-get install dataset-fashion-mnist (or --data-dir; README, Data).
# THREADS (default 2; 1 when two benchmarks share the 2 cores).
# SCALE=cpu (default) fits a 2-core CPU: narrower networks (width 8), a training subset of TRAIN
# samples (default 4000, seeded, every class), few epochs, 2 seeds. SCALE=paper runs the same grid
# unchanged but for the scale: full width, all 60000 training images, the paper's epochs and batch
# size (a GPU). In both, 10 % of the training samples are held out and every lr is chosen on them
# (never on the test set); the table's test top-1 is that of the chosen lr.
# Reductions, each stated with the numbers it produced: SEEDS (e.g. 0), EPOCHS, TRAIN (cpu),
# BLOCKS (fwdgrad: "8 16"), SPACES (fwdgrad: "weight activity"), GUESSES (fwdgrad: a subset of
# "local:head=fg-cnn local:head=fg-mlp local:head=fg-linear ntk:head=fg-cnn gaussian rademacher
# local-target", the last the Table 9 row), BOARDS (leaderboard: "k4 layerwise"),
# MODULES (sgr-every: 4,8).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?fwdgrad|leaderboard|bpfree|sgr-every}
scale=${SCALE:-cpu}
out=${2:-runs/bench-fashion-mnist-$what-$scale}
ll=${LOCALLEARN:-.venv/bin/locallearn}
case $scale in
  cpu)   data=(--dataset fashion-mnist --dataset-kwargs "train=${TRAIN:-4000}")
         run=(--seeds "${SEEDS:-0,1}" --threads "${THREADS:-2}" --no-progress --val-split 0.1)
         resnet18=(--model-kwargs stem=cifar width=8); resnet18_plain=(--model-kwargs stem=cifar width=8 plain=true)
         resnet20=(--model resnet20 --model-kwargs width=8); epochs_fwd=${EPOCHS:-3}; epochs_board=${EPOCHS:-4}; batch=128 ;;
  paper) data=(--dataset fashion-mnist)
         run=(--seeds "${SEEDS:-0,1,2}" --no-progress --val-split 0.1)
         resnet18=(--model-kwargs stem=cifar); resnet18_plain=(--model-kwargs stem=cifar plain=true)
         resnet20=(--model resnet20); epochs_fwd=${EPOCHS:-100}; epochs_board=${EPOCHS:-100}; batch=256 ;;
  *) echo "unknown SCALE=$scale; choose cpu or paper" >&2; exit 2 ;;
esac

case $what in
  fwdgrad)  # the forward-gradient paper's Tables 7 (global target) and 9 (local target), ResNet-18 (CIFAR
    # stem), 8 blocks (with skips) and 16 blocks (no skips, one conv each, the first block two layers),
    # weight and activity space, the authors' estimator (per sample x per tensor, emulated). Guesses'
    # heads: the paper's CNN / MLP / linear auxiliaries (fg-*); NTK re-initialises the CNN head.
    # Local guesses, local learning and end-to-end choose their lr in {0.02, 0.1}; random and NTK
    # guesses in {0.005, 0.02} (the paper gives them smaller lrs, appendix A.3).
    for blocks in ${BLOCKS:-8 16}; do
      if [ "$blocks" = 8 ]; then model=(--model resnet18 "${resnet18[@]}"); else model=(--model resnet18 "${resnet18_plain[@]}"); fi
      big="0.02|0.1"; small="0.005|0.02"
      all_guesses="local:head=fg-cnn local:head=fg-mlp local:head=fg-linear ntk:head=fg-cnn gaussian rademacher local-target"
      methods="bp:lr=$big,dgl:head=fg-cnn:lr=$big"
      for space in ${SPACES:-weight activity}; do
        for guess in ${GUESSES:-$all_guesses}; do
          case $guess in
            local:*) methods+=",fwdgrad:target=global:space=$space:guess=$guess:lr=$big" ;;
            local-target) methods+=",fwdgrad:target=local:space=$space:guess=gaussian:head=fg-cnn:lr=$small" ;;  # Table 9
            *) methods+=",fwdgrad:target=global:space=$space:guess=$guess:lr=$small" ;;
          esac
        done
      done
      $ll bench "${data[@]}" "${model[@]}" "${run[@]}" --out "$out/blocks$blocks" --modules "$blocks" --epochs $epochs_fwd \
        --batch-size $batch --head fg-cnn --fwd-mode emulate --no-measure --timing-rounds 0 --methods "$methods"
    done ;;
  leaderboard)  # every method on ResNet-20 at K=4 and one module per layer (K=10), lr chosen on validation
    # in {0.02, 0.1}; memory, FLOPs and time ratios to bp from the same bench (interleaved timing)
    for board in ${BOARDS:-k4 layerwise}; do
      case $board in
        k4) methods="bp,checkpoint,greedy,dgl,reforward,sgr,auglocal,infopro,predsim,backlink,fwdgrad:head=fg-cnn"
            modules=4 ;;
        # one module per layer: checkpoint would be BP again, greedy trains 10 phases; both left to K=4
        layerwise) methods="bp,dgl,reforward,sgr,auglocal,infopro,predsim,backlink,fwdgrad:head=fg-cnn"
            modules=10 ;;
        *) echo "unknown BOARDS entry $board; choose k4 or layerwise" >&2; exit 2 ;;
      esac
      $ll bench "${data[@]}" "${resnet20[@]}" "${run[@]}" --out "$out/$board" --modules $modules --epochs $epochs_board \
        --batch-size $batch --head linear --lr-grid 0.02,0.1 --methods "$methods"
    done ;;
  bpfree)  # the BP-free family on a 4-layer MLP, one module per layer (SGR Table 4's setting)
    $ll bench "${data[@]}" "${run[@]}" --out "$out" --model mlp --split layer --epochs $((epochs_board * 2)) --batch-size $batch \
      --lr-grid 0.005,0.02,0.1 --methods bp,fa,dfa,drtp,pepita,layerwise-bpfree,sgr-bpfree ;;
  sgr-every)  # SGR's approximations: the penalty every m steps (m = 1 is exact SGR), on a quarter of each batch
    methods=bp,dgl
    for m in 1 2 4 8; do methods+=",sgr:sgr-lambda=100:sgr-every=$m"; done
    methods+=",sgr:sgr-lambda=100:sgr-subbatch=0.25"
    $ll bench "${data[@]}" "${run[@]}" --out "$out" --model cnn1d --model-kwargs "widths=(16,16,32,32,64,64,64,64)" --head linear \
      --modules "${MODULES:-4,8}" --epochs $epochs_board --batch-size $batch --lr-grid 0.02,0.1 --methods "$methods" ;;
  *) echo "unknown benchmark $what; choose fwdgrad, leaderboard, bpfree or sgr-every" >&2; exit 2 ;;
esac
