"""Representation analyses of trained runs, for every method (AugLocal section 4.3, Figures 3-4).

    locallearn analyze cka RUN [RUN ...] --reference BP_RUN     linear CKA of every hidden layer
    locallearn analyze probe RUN [RUN ...]                       linear probe on every frozen layer

CKA (Kornblith et al. 2019, linear kernel): for the outputs X (n x p) and Y (n x q) of a layer of
two networks on the same n test inputs, with columns centred,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) = <HKH, HLH> / (||HKH|| ||HLH||),  K = XX^T, L = YY^T

(the feature form when p*q is small, the Gram form otherwise; both exact, in float64). It is 1
for X = Y, invariant to orthogonal transforms and isotropic scaling, not to other linear maps.

Linear probing: the network is frozen (eval mode); the output of each layer, average-pooled like
PredSim's prediction head to at most --max-features values and standardised, trains a linear
classifier (Adam, cross-entropy) on training inputs; its top-1 on test inputs is reported.

Layers are evaluated one at a time over all samples (layer l's outputs feed layer l+1), so the
memory is that of one layer's outputs, whatever the depth. Both write a PNG (per layer) and a JSON.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpointing import save_json
from ..errors import UserError
from ..rules.predsim import pooled_sizes
from . import ANALYSES, Analysis, check_output, check_threads, load_run, save_figure


# ---------------------------------------------------------------------------------------- maths
def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same n samples (rows), any feature shapes."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples in both: {x.shape[0]} vs {y.shape[0]} rows")
    x = x.flatten(1).double()
    y = y.flatten(1).double()
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    n = x.shape[0]
    if x.shape[1] * y.shape[1] <= n * n:  # feature form: p x q products
        cross = (y.t() @ x).square().sum()
        norm_x = torch.linalg.matrix_norm(x.t() @ x)
        norm_y = torch.linalg.matrix_norm(y.t() @ y)
    else:  # Gram form: n x n products (the centring is already in x and y)
        gram_x, gram_y = x @ x.t(), y @ y.t()
        cross = (gram_x * gram_y).sum()
        norm_x = torch.linalg.matrix_norm(gram_x)
        norm_y = torch.linalg.matrix_norm(gram_y)
    denominator = float(norm_x * norm_y)
    return float(cross) / denominator if denominator > 0 else float("nan")


@torch.no_grad()
def layer_outputs(model, x: torch.Tensor, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(l, outputs of layer l for every row of x), for l = 0 .. L-1, in eval mode."""
    model.eval()
    h = x
    for index, layer in enumerate(model.layers):
        h = torch.cat([layer(h[s:s + batch_size]) for s in range(0, len(h), batch_size)])
        yield index, h


def collect(batches, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `limit` samples of a batch iterator, as two tensors."""
    xs, ys, count = [], [], 0
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        count += len(y)
        if count >= limit:
            break
    if not xs:
        raise UserError("the dataset gave no samples")
    return torch.cat(xs)[:limit], torch.cat(ys)[:limit]


def pooled_features(h: torch.Tensor, max_features: int) -> torch.Tensor:
    """(n, C, *spatial) -> (n, <= max_features): average pooling as PredSim's prediction head."""
    if h.dim() > 2:
        sizes = pooled_sizes(tuple(h.shape[1:]), max_features)
        h = F.adaptive_avg_pool1d(h, sizes) if h.dim() == 3 else F.adaptive_avg_pool2d(h, sizes)
    return h.flatten(1)


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                num_classes: int, epochs: int = 30, lr: float = 1e-3, batch_size: int = 256, seed: int = 0) -> float:
    """Top-1 (%) on the test features of a linear classifier trained on the training features."""
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = nn.Linear(train_x.shape[1], num_classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(train_y), generator=generator)
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                loss = F.cross_entropy(probe(train_x[index]), train_y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        return 100.0 * float((probe(test_x).argmax(1) == test_y).float().mean())


# ------------------------------------------------------------------------------------ plumbing
def _load(run: str, device: str):
    trainer = load_run(run, device)
    return trainer, trainer.net.model


def _label(run: str, trainer) -> str:
    options = ",".join(f"{k}={v}" for k, v in sorted(trainer.cfg.rule_options.items()))
    return f"{Path(run).name} ({trainer.cfg.method}{', ' + options if options else ''})"


def _plot(series: dict[str, list[float]], ylabel: str, title: str, output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, values in series.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    ax.set_xlabel("hidden layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, output)


def _save(series: dict, output: str, extra: dict) -> Path:
    path = Path(output).with_suffix(".json")
    save_json({**extra, "per_layer": series}, path)
    return path


def _print_table(series: dict[str, list[float]], fmt: str) -> None:
    labels = list(series)
    print("layer  " + "  ".join(f"[{i + 1}]" for i in range(len(labels))))
    for layer in range(max(len(v) for v in series.values())):
        print(f"{layer + 1:5d}  " + "  ".join(fmt.format(series[l][layer]) for l in labels))
    for i, label in enumerate(labels):
        values = series[label]
        print(f"[{i + 1}] {label}: mean {sum(values) / len(values):.4g}")


def _common_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories (the --out of locallearn train)")
    parser.add_argument("--batch-size", type=int, default=256, help="inputs per forward pass (default: 256)")
    parser.add_argument("--device", default="cpu", help="where to run the networks (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")


def _positive(args, *names) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


@ANALYSES.register("cka")
class CKA(Analysis):
    help = "linear CKA of every hidden layer of runs against a BP-trained reference run (PNG + JSON)"

    @staticmethod
    def add_arguments(parser):
        _common_arguments(parser)
        parser.add_argument("--reference", required=True, help="the BP-trained run to compare with (same model "
                                                               "depth and data)")
        parser.add_argument("--samples", type=int, default=1000, help="test inputs used (default: 1000)")
        parser.add_argument("--output", default="cka.png", help="PNG to write; the numbers go to the same name "
                                                                ".json (default: cka.png)")

    def run(self, args) -> int:
        _positive(args, "samples", "batch_size")
        check_threads(args.threads)
        check_output(args.output, image=True)
        check_output(Path(args.output).with_suffix(".json"))
        if args.threads:
            torch.set_num_threads(args.threads)
        reference, reference_model = _load(args.reference, args.device)
        x, _ = collect(reference.data.test_batches(args.batch_size), args.samples)
        series: dict[str, list[float]] = {}
        for run in args.runs:
            trainer, model = _load(run, args.device)
            for key in ("dataset", "dataset_kwargs"):
                if getattr(trainer.cfg, key) != getattr(reference.cfg, key):
                    raise UserError(f"{run} and the reference {args.reference} were trained on different data "
                                    f"({key}: {getattr(trainer.cfg, key)!r} vs {getattr(reference.cfg, key)!r})")
            if len(model.layers) != len(reference_model.layers):
                raise UserError(f"{run} has {len(model.layers)} layers but the reference {args.reference} has "
                                f"{len(reference_model.layers)}; CKA per layer needs the same depth")
            values = []
            for (_, mine), (_, theirs) in zip(layer_outputs(model, x, args.batch_size),
                                              layer_outputs(reference_model, x, args.batch_size)):
                values.append(linear_cka(mine, theirs))
            series[_label(run, trainer)] = values
        _print_table(series, "{:.4f}")
        _plot(series, "linear CKA with the BP reference", f"CKA per layer vs {Path(args.reference).name} "
                                                          f"({len(x)} test inputs)", args.output)
        saved = _save(series, args.output, {"reference": args.reference, "samples": len(x)})
        print(f"wrote {args.output} and {saved}")
        return 0


@ANALYSES.register("probe")
class Probe(Analysis):
    help = "linear probing: a linear classifier trained on every frozen hidden layer of runs (PNG + JSON)"

    @staticmethod
    def add_arguments(parser):
        _common_arguments(parser)
        parser.add_argument("--train-samples", type=int, default=5000, help="training inputs (default: 5000)")
        parser.add_argument("--test-samples", type=int, default=2000, help="test inputs (default: 2000)")
        parser.add_argument("--max-features", type=int, default=2048,
                            help="feature maps are average-pooled to at most this many values (default: 2048)")
        parser.add_argument("--epochs", type=int, default=30, help="epochs of each probe (default: 30)")
        parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the probes (default: 1e-3)")
        parser.add_argument("--output", default="probe.png", help="PNG to write; the numbers go to the same name "
                                                                  ".json (default: probe.png)")

    def run(self, args) -> int:
        _positive(args, "train_samples", "test_samples", "max_features", "epochs", "batch_size")
        if not (args.lr > 0 and math.isfinite(args.lr)):
            raise UserError(f"--lr must be a finite positive number, got {args.lr}")
        check_threads(args.threads)
        check_output(args.output, image=True)
        check_output(Path(args.output).with_suffix(".json"))
        if args.threads:
            torch.set_num_threads(args.threads)
        series: dict[str, list[float]] = {}
        for run in args.runs:
            trainer, model = _load(run, args.device)
            train_x, train_y = collect(trainer.data.train_batches(args.batch_size, 0, "none", torch.Generator()),
                                       args.train_samples)
            test_x, test_y = collect(trainer.data.test_batches(args.batch_size), args.test_samples)
            values = []
            for (_, train_h), (_, test_h) in zip(layer_outputs(model, train_x, args.batch_size),
                                                 layer_outputs(model, test_x, args.batch_size)):
                values.append(train_probe(pooled_features(train_h, args.max_features).cpu(), train_y.cpu(),
                                          pooled_features(test_h, args.max_features).cpu(), test_y.cpu(),
                                          model.num_classes, args.epochs, args.lr, args.batch_size))
            series[_label(run, trainer)] = values
        _print_table(series, "{:7.2f}")
        _plot(series, "linear probe test top-1 (%)", f"linear probing per layer ({len(train_y)} train / "
                                                     f"{len(test_y)} test inputs)", args.output)
        saved = _save(series, args.output, {"train_samples": len(train_y), "test_samples": len(test_y),
                                            "max_features": args.max_features, "epochs": args.epochs})
        print(f"wrote {args.output} and {saved}")
        return 0
