"""Cosine between fwdgrad's weight-space update and the true (end-to-end) gradient of each block, at
initialisation, for the projection granularities: per sample x per tensor (the authors') against one
projection per block (the old deviation). No training step is taken; each batch is a fresh network.

    PYTHONPATH=. python benchmarks/fwdgrad_cosine.py [--model mlp] [--modules 4] [--head fg-linear] ...

Prints one line per variant: the mean (and std over seeds x batches) of the per-block cosines.
"""
from __future__ import annotations

import argparse
import ast
import statistics

import torch
import torch.nn.functional as F

from locallearn import Trainer
from locallearn.config import TrainConfig
from locallearn.module_state import frozen_batchnorm_statistics

VARIANTS = {
    "sample-tensor, local guess": dict(guess="local"),
    "block, local guess": dict(guess="local", projection_granularity="block"),
    "sample-tensor, gaussian (authors' scale)": dict(guess="gaussian"),
    "block, gaussian (unbiased)": dict(guess="gaussian", projection_granularity="block", random_scale="unbiased"),
}


def block_cosines(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Cosine of the update handed to each block but the last against dL/dtheta_k."""
    net, rule = trainer.net, trainer.rule
    blocks = net.local_modules[:-1]
    params = [[p for p in m.body.parameters() if p.requires_grad] for m in blocks]
    with frozen_batchnorm_statistics(net.model):
        loss = F.cross_entropy(net.model(x), y)
    true = torch.autograd.grad(loss, [p for group in params for p in group])
    updates = {}
    rule._step = lambda module, pairs: updates.update({id(p): g.detach() for p, g in pairs})  # capture, no step
    rule.train_step(net, x, y, list(range(len(net))))
    found, start = [], 0
    for group in params:
        g = torch.cat([t.flatten() for t in true[start:start + len(group)]])
        u = torch.cat([updates[id(p)].flatten() for p in group])
        found.append(float(F.cosine_similarity(g, u, dim=0)))
        start += len(group)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--model-kwargs", default="{}", help="a Python dict, e.g. \"{'depth': 2}\"")
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--modules", type=int, default=4)
    parser.add_argument("--head", default="fg-linear")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.model} {args.model_kwargs} on {args.dataset}, {args.modules} blocks, head {args.head}, batch {args.batch_size}, "
          f"global target, emulate, {args.seeds} seeds x {args.batches} batches at initialisation")
    for label, options in VARIANTS.items():
        cosines = []
        for seed in range(args.seeds):
            config = TrainConfig(method="fwdgrad", model=args.model, model_kwargs=ast.literal_eval(args.model_kwargs),
                                 dataset=args.dataset, modules=args.modules,
                                 head=args.head, batch_size=args.batch_size, seed=seed, threads=1, progress=False,
                                 measure=False, rule_options={"fwd_mode": "emulate", **options})
            trainer = Trainer(config)
            batches = trainer.data.train_batches(args.batch_size, seed, "none", torch.Generator().manual_seed(seed))
            for _, (x, y) in zip(range(args.batches), batches):
                torch.manual_seed(seed)
                cosines.extend(block_cosines(trainer, x, y))
        print(f"{label:45s} cosine to the true gradient {statistics.mean(cosines):.3f} "
              f"+- {statistics.stdev(cosines):.3f} (n={len(cosines)})")


if __name__ == "__main__":
    main()
