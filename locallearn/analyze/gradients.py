"""`locallearn analyze gradients RUN_DIR`: how local updates agree with each other and with BP.

For a saved run of any method, on a few fixed training batches, per module k:

- `sgr`: the SGR penalty L_k^SGR = MSE(n(dL_k/dx_{k-1}), n(dL_{k-1}/dx_{k-1})) (SGR eq. 6, Figure 2),
  where L_k is the local loss of module k's own prediction (`rule.logits`: its head, the classifier).
  For the BP-free ETF rules (`layerwise-bpfree`, `sgr-bpfree`), whose every transform unit learns
  on its own, it is what they train and log: the penalty between neighbouring units (each unit's
  own ETF or classifier loss), averaged over the units of module k;
- `loss_change`: Delta L_k = L_k(x_{k-1}^(t+1)) - L_k(x_{k-1}^(t)) (SGR Figure 3), the change of
  module k's local loss, with module k unchanged, caused by updating modules 1..k-1 on the same
  batch. The update is a plain SGD step of size --step-size along each module's local update
  direction (no momentum or weight decay), so that finished runs, whose LR schedule has annealed
  to zero, can still be probed. Negative: the lower modules' updates helped module k;
- `cos_bp`: the cosine between module k's local update direction (the gradient its rule hands to
  the optimizer, recorded from one `train_step` that changes nothing) and the global BP gradient
  of the last module's loss w.r.t. the same model parameters (SGR Proposition 3.4: 1 if every
  L^SGR were 0), and `norm_ratio` = |local| / |BP|.

Methods without local predictions (bp, fa, dfa, drtp, pepita) have no `sgr` and no
`loss_change` for modules before the last. `gradient_diagnostics(trainer, batches)` is the same
thing from Python, e.g. from a training callback.
"""
from __future__ import annotations

import contextlib
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpointing import save_json
from ..errors import UserError
from ..rules.base import detached_input
from ..rules.bpfree import LayerwiseBPFree
from ..rules.sgr import NORMALISATIONS, REDUCTIONS, sgr_penalty
from . import ANALYSES, Analysis, check_output, check_seed, load_run


class _Recorder:
    """Stands in for a module's optimizer: remembers the gradients `step()` would apply, moves nothing."""

    def __init__(self, params):
        self.params = list(params)
        self.recorded: dict[int, torch.Tensor] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                previous = self.recorded.get(id(p))
                self.recorded[id(p)] = p.grad.detach().clone() + (0 if previous is None else previous)


@contextlib.contextmanager
def _state_preserved(net):
    """Restore weights and BN statistics afterwards: a probe must not change the run."""
    saved = {k: v.detach().clone() for k, v in net.state_dict().items()}
    try:
        yield
    finally:
        net.load_state_dict(saved)
        for p in net.parameters():
            p.grad = None


def model_parameters(module) -> list[torch.nn.Parameter]:
    """The model's own parameters in module k (the classifier counts for the last module; heads do not)."""
    params = list(module.body.parameters())
    return params + (list(module.head.parameters()) if module.is_last else [])


def local_update_directions(trainer, x, y) -> list[dict[int, torch.Tensor]]:
    """Per module, id(parameter) -> the gradient the rule's step would apply (one `train_step`, no change)."""
    net, rule = trainer.net, trainer.rule
    recorders = [_Recorder(module.trainable_parameters()) for module in net]
    optimizers = [module.optimizer for module in net]
    rule_state = rule.state_dict()  # e.g. sgr's step count (--sgr-every): the probe is not a step of the run
    with _state_preserved(net):
        for module, recorder in zip(net, recorders):
            module.optimizer = recorder
        try:
            rule.train_step(net, x, y, list(range(len(net))))
        finally:
            for module, optimizer in zip(net, optimizers):
                module.optimizer = optimizer
            rule.load_state_dict(rule_state)
    return [recorder.recorded for recorder in recorders]


def bp_gradient(trainer, x, y) -> dict[int, torch.Tensor]:
    """id(parameter) -> gradient of the last loss, back-propagated through the whole model."""
    net = trainer.net
    params = [p for p in net.model.parameters() if p.requires_grad]
    with _state_preserved(net):
        loss = F.cross_entropy(net.model(x), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {id(p): g for p, g in zip(params, grads) if g is not None}


def _local_loss(rule, module, features, y) -> torch.Tensor:
    return F.cross_entropy(rule.logits(module, features), y)


def _has_local_loss(rule, module) -> bool:
    return rule.uses_aux_heads or module.is_last


def sgr_penalties(trainer, x, y, normalisation="l2", reduction="mean") -> list[float | None]:
    """L_k^SGR per module, as the rule trains and logs it: between modules, or (BP-free rules, whose
    every unit learns on its own) between neighbouring units, averaged over the units of module k."""
    if isinstance(trainer.rule, LayerwiseBPFree):
        return _unit_penalties(trainer, x, y, normalisation, reduction)
    net, rule = trainer.net, trainer.rule
    penalties: list[float | None] = [None] * len(net)
    with _state_preserved(net), torch.enable_grad():
        h, previous = x, None
        for module in net:
            if not _has_local_loss(rule, module):
                break
            inputs = detached_input(h, requires_grad=True)
            outputs = module(inputs)
            gradient_in, gradient_out = torch.autograd.grad(_local_loss(rule, module, outputs, y), [inputs, outputs])
            if previous is not None:
                penalties[module.index] = float(sgr_penalty(gradient_in, previous, normalisation, reduction))
            previous, h = gradient_out, outputs.detach()
    return penalties


def _unit_penalties(trainer, x, y, normalisation, reduction) -> list[float | None]:
    """The per-unit penalty of `layerwise-bpfree`/`sgr-bpfree`: unit j's input gradient of its own local
    loss (ETF or classifier, `rule.local_error`) against unit j-1's output gradient; the first unit has none."""
    net, rule = trainer.net, trainer.rule
    rule._matrices_to(x.device)
    penalties: list[float | None] = [None] * len(net)
    with _state_preserved(net), torch.enable_grad():
        h, previous = x, None
        for module in net:
            found = []
            for unit in rule.module_units(module):
                inputs = detached_input(h, requires_grad=True)
                outputs = unit(inputs)
                _, output_gradient = rule.local_error(unit, outputs, y, differentiable=False)
                input_gradient, = torch.autograd.grad(outputs, inputs, output_gradient)
                if previous is not None:
                    found.append(float(sgr_penalty(input_gradient, previous, normalisation, reduction)))
                previous, h = output_gradient, outputs.detach()
            penalties[module.index] = statistics.fmean(found) if found else None
    return penalties


def loss_changes(trainer, x, y, directions, step_size: float) -> tuple[list, list]:
    """(L_k before, Delta L_k) per module; see the module docstring."""
    net, rule = trainer.net, trainer.rule
    before, change = [None] * len(net), [None] * len(net)
    with _state_preserved(net), torch.no_grad():
        h = x
        for module in net:
            out = module(h)
            if _has_local_loss(rule, module):
                before[module.index] = float(_local_loss(rule, module, out, y))
            h = out
        h = x
        for module, direction in zip(net, directions):
            out = module(h)  # module k still has its old parameters; its input comes from updated modules 1..k-1
            if _has_local_loss(rule, module) and module.index > 0:
                change[module.index] = float(_local_loss(rule, module, out, y)) - before[module.index]
            for p in module.trainable_parameters():
                if id(p) in direction:
                    p.sub_(step_size * direction[id(p)])
            h = module(h)  # the updated module k feeds module k+1
    return before, change


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    denominator = float(a.norm() * b.norm())
    return float(a @ b) / denominator if denominator > 0 else None


def gradient_diagnostics(trainer, batches, step_size: float | None = None, normalisation: str = "l2",
                         reduction: str = "mean") -> list[dict]:
    """One row per module with the means over `batches` ((x, y) pairs) of every diagnostic."""
    net = trainer.net
    step_size = trainer.cfg.lr if step_size is None else step_size
    samples: list[dict[str, list]] = [{} for _ in net]

    def add(k, key, value):
        if value is not None and math.isfinite(value):
            samples[k].setdefault(key, []).append(value)

    for x, y in batches:
        directions = local_update_directions(trainer, x, y)
        global_gradient = bp_gradient(trainer, x, y)
        penalties = sgr_penalties(trainer, x, y, normalisation, reduction)
        before, change = loss_changes(trainer, x, y, directions, step_size)
        for module, direction in zip(net, directions):
            params = model_parameters(module)
            local = torch.cat([direction.get(id(p), torch.zeros_like(p)).flatten() for p in params])
            bp = torch.cat([global_gradient.get(id(p), torch.zeros_like(p)).flatten() for p in params])
            k = module.index
            add(k, "cos_bp", _cosine(local, bp))
            add(k, "norm_ratio", float(local.norm() / bp.norm()) if float(bp.norm()) > 0 else None)
            add(k, "loss", before[k])
            add(k, "loss_change", change[k])
            add(k, "sgr", penalties[k])
    rows = []
    for k, found in enumerate(samples):
        row = {"module": k + 1}
        for key in ("loss", "loss_change", "sgr", "cos_bp", "norm_ratio"):
            values = found.get(key, [])
            row[key] = statistics.fmean(values) if values else None
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    header = ["module", "L_k", "Delta L_k", "L_k^SGR", "cos(local, BP)", "|local|/|BP|"]
    keys = ["loss", "loss_change", "sgr", "cos_bp", "norm_ratio"]
    formats = [".4f", "+.2e", ".3e", ".3f", ".3f"]
    lines = [header] + [[str(r["module"])] + ["-" if r[k] is None else format(r[k], f) for k, f in zip(keys, formats)]
                        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


@ANALYSES.register("gradients")
class Gradients(Analysis):
    help = ("SGR penalty, loss change caused by the lower modules' updates (SGR Figure 3) and cosine to the BP "
            "gradient, per module of a saved run")

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("run", help="run directory (the --out of locallearn train)")
        parser.add_argument("--batches", type=int, default=8, help="training batches to average over (default: 8)")
        parser.add_argument("--batch-size", type=int, default=None, help="default: the run's batch size")
        parser.add_argument("--step-size", type=float, default=None,
                            help="SGD step along the local update directions for Delta L_k (default: the run's --lr)")
        parser.add_argument("--sgr-norm", choices=NORMALISATIONS, default="l2", help="default: l2 (Algorithm 1)")
        parser.add_argument("--sgr-reduction", choices=REDUCTIONS, default="mean", help="default: mean (Algorithm 1)")
        parser.add_argument("--seed", type=int, default=0, help="which training batches (default: 0)")
        parser.add_argument("--output", default=None, help="JSON file to write (default: RUN/gradients.json)")

    def run(self, args) -> int:
        if args.batches < 1 or (args.batch_size is not None and args.batch_size < 1):
            raise UserError("--batches and --batch-size must be at least 1")
        if args.step_size is not None and not (args.step_size >= 0 and math.isfinite(args.step_size)):
            raise UserError(f"--step-size must be a finite number >= 0, got {args.step_size}")
        check_seed(args.seed)
        output = check_output(Path(args.output) if args.output else Path(args.run) / "gradients.json")
        trainer = load_run(args.run)
        batch_size = args.batch_size or trainer.cfg.batch_size
        batches = []
        for x, y in trainer.data.train_batches(batch_size, args.seed, "none", torch.Generator()):
            batches.append((x, y))
            if len(batches) == args.batches:
                break
        rows = gradient_diagnostics(trainer, batches, args.step_size, args.sgr_norm, args.sgr_reduction)
        step_size = trainer.cfg.lr if args.step_size is None else args.step_size
        print(f"{trainer.cfg.method} K={len(trainer.net)} on {trainer.cfg.dataset}: {len(batches)} batches of "
              f"{batch_size}, step size {step_size:g} for Delta L_k")
        print(format_rows(rows))
        save_json({"run": str(args.run), "method": trainer.cfg.method, "batches": len(batches),
                   "batch_size": batch_size, "step_size": step_size, "rows": rows}, output)
        print(f"wrote {output}")
        return 0
