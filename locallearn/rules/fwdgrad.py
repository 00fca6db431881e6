"""Forward gradients with local guesses (Fournier, Rivaud, Belilovsky, Eickenberg, Oyallon, ICML 2023):
the `fwdgrad` estimator and preset (objective head x coupling none x forward gradient).

Every block but the last is updated with an estimate of a *gradient target* built from a
*gradient guess* and directional derivatives (eq. 1, helpers in `forward_gradient.py`):

    target  global        the end-to-end loss (the classifier's cross-entropy)
            local         the block's own auxiliary loss
            intermediate  the auxiliary loss of the next block (the end-to-end loss for block K-2)
    guess   local         gradient of the block's trained auxiliary loss (--head fg-cnn/fg-mlp/fg-linear,
                          or any objective: --guess-head auglocal|infopro|predsim|HEAD)
            ntk           the same with the auxiliary net re-initialised at every batch
            fixed-ntk     the same with the auxiliary net never trained (appendix B.2)
            gaussian, rademacher   random directions
    space   weight        eq. 4, projected per sample and per parameter tensor and summed over the
                          batch, as the authors' code does (`per_sample.py`); or, as an option, the
                          block's parameters as one vector (--projection-granularity block)
            activity      eq. 5: per sample, u_i = guess of dL/dh_i at the block output h; the
                          estimate is back-propagated inside the block only
    projection guess      on each sample's own guess;  span: on the span of the batch's guesses
                          (Table 6, activity space)

Random guesses are normalised in weight space (<g,u>/||u||^2 u) and not in activity space
(<g,u> u), as in the authors' code; --random-scale unbiased drops the normalisation everywhere.
The last block always gets its true gradient, as in the paper. Auxiliary nets learn from their
own local loss when they are used as a local guess or define a target (local, intermediate).

The local loss is the objective's (objective.py): the paper's guesses come from "any local loss"
(section 3.1), so an AugLocal auxiliary net, InfoPro's CE + reconstruction or PredSim's loss can
give the guess (and the local and intermediate targets). Forward mode (--fwd-mode jvp) takes the
derivatives of a local or intermediate target through a head's cross-entropy, so with those
targets it needs an objective whose loss is one (head, auglocal without reconstruction).

`fwd_mode=emulate` (the default; what the authors' code does, appendix A.3): one forward pass
through the whole network with its graph, then backward passes give the targets and the guesses
explicitly, and the estimate is formed from <g, u> computed as a dot product. BP's memory.

`fwd_mode=jvp` (genuine forward mode): blocks are processed in order; block k runs forward with its
autograd graph and computes its guess by back-propagating its auxiliary loss through itself only;
<g, u> then comes from JVPs through the target's path (the rest of the network, or a head) under
`torch.no_grad()`, so no activation of a later block is ever saved. The same update as the
emulation. With the global target the default `jvp_schedule=sweep` carries the directions of all
blocks together through one forward sweep and steps every block at the end (`forward_sweep.py`);
`per-block` takes one JVP through the rest of the network per block and direction and steps at
once. The number of directions is what the estimate needs: one per block
(--projection-granularity block), one per parameter tensor (sample-tensor), and one per sample on
top when a train-mode BatchNorm after the perturbation mixes samples (see `forward_gradient.py`).

BatchNorm running statistics (`--bn-stats`, issue 28). Training normalises with the batch statistics,
evaluation with the running ones. The estimates move the weights fast in directions that a train-mode
BN does not see (those that shift or rescale a channel before a BN, to which the batch gradient is
blind and the per-sample projections are not), so PyTorch's running average, which mixes the
statistics of the last ~1/momentum steps' weights, lags them, and the eval-mode network can be at
chance while the train-mode one learns (the authors' code does the same). `follow` (the default)
carries the running statistics along with every step: one forward pass without graph of the stepped
network on the step's batch measures how the step moved every BN's batch statistics, the running
mean is shifted and the running variance rescaled by that change, then averaged with the new batch
statistics, with equal weights for the first 1/momentum batches
(`module_state.follow_running_statistics`). The updates are the same bit for bit; only the running
buffers differ. `ema` keeps PyTorch's running average.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import forward_gradient as fg
from .. import forward_sweep as fs
from ..errors import UserError
from ..module_state import follow_running_statistics, frozen_batchnorm_statistics, running_statistics
from ..network import LocalModule, ModularNet
from ..per_sample import BlockTensors
from .base import Rule, Stats, detached_input, option, record
from .objective import IMAGE
from .registry import RULES

TARGETS = ("global", "local", "intermediate")
GUESSES = ("local", "ntk", "fixed-ntk", "gaussian", "rademacher")
RANDOM_GUESSES = ("gaussian", "rademacher")
SPACES = ("weight", "activity")
GRANULARITIES = ("sample-tensor", "block")
RANDOM_SCALES = ("authors", "unbiased")
FWD_MODES = ("emulate", "jvp")
JVP_SCHEDULES = ("sweep", "per-block")
PROJECTIONS = ("guess", "span")
BN_JVP = ("exact", "single")
BN_STATS = ("follow", "ema")


def _gradients(output: torch.Tensor, inputs: Sequence[torch.Tensor], grad_output: torch.Tensor | None = None,
               retain: bool = False) -> list[torch.Tensor]:
    """torch.autograd.grad with zeros for inputs the output does not depend on."""
    found = torch.autograd.grad(output, list(inputs), grad_output, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, found)]


def _trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


def _split(flat: list[torch.Tensor], groups: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Cut `flat` into consecutive lists as long as the lists of `groups`."""
    found, start = [], 0
    for group in groups:
        found.append(flat[start:start + len(group)])
        start += len(group)
    return found


class _ForwardMode:
    """Directional derivatives of block k's target by forward-mode AD (fwd_mode=jvp)."""

    def __init__(self, module: LocalModule, inputs: torch.Tensor, output: torch.Tensor, path: nn.Module,
                 y: torch.Tensor, exact: bool, tensors: BlockTensors | None = None, recorded=None):
        self.module, self.inputs, self.output, self.path, self.y = module, inputs, output.detach(), path, y
        self.exact, self.tensors, self.recorded = exact, tensors, recorded

    def weight(self, guess: list[torch.Tensor]) -> torch.Tensor:
        tangents = {name: u for (name, _), u in zip(_trainable(self.module.body), guess)}
        return fg.weight_loss_tangent(self.module.body, self.inputs, tangents, self.path, self.y)

    def per_tensor(self, guess: list[torch.Tensor]) -> list[torch.Tensor]:
        """<g_i^t, u_i^t> for every tensor t: the per-sample copies of t moving along their guesses
        move the output of t's layer along `output_tangent`, which enters a re-run of the block there."""
        body = self.module.body
        # conservative: a train-mode BN anywhere in the block or on the path (one before the layer costs
        # JVPs but changes nothing)
        coupled = fg.couples_samples([body, self.path])
        derivatives = []
        for index, ((layer, _, _), u) in enumerate(zip(self.tensors.tensors, guess)):
            tangent = self.tensors.output_tangent(self.recorded, index, u)

            def along(t, reduction, layer=layer):
                return fg.layer_loss_tangent(body, self.inputs, layer, self.path, self.y, t, reduction)

            derivatives.append(fg.split_per_sample(along, tangent, coupled, self.exact))
        return derivatives

    def per_sample(self, tangent: torch.Tensor) -> torch.Tensor:
        return fg.per_sample_derivatives(self.path, self.output, tangent, self.y, self.exact)


class _ExplicitTarget:
    """The same derivatives as dot products with a target computed by back-propagation (emulate)."""

    def __init__(self, target: list[torch.Tensor]):
        self.target = target

    def weight(self, guess: list[torch.Tensor]) -> torch.Tensor:
        return fg.total_dot(self.target, guess)

    def per_tensor(self, guess: list[torch.Tensor]) -> list[torch.Tensor]:
        return [fg.per_sample_dot(g, u) for g, u in zip(self.target, guess)]

    def per_sample(self, tangent: torch.Tensor) -> torch.Tensor:
        return fg.per_sample_dot(self.target[0], tangent)


@RULES.register("fwdgrad")
@dataclass(init=False)
class ForwardGradient(Rule):
    """Forward-gradient estimates of a target gradient projected on a guess, per block."""

    name = "fwdgrad"
    summary = "forward gradient: a global/local/intermediate target projected on a local, NTK or random guess"
    estimator = "fwdgrad"
    objectives = ("head", "auglocal", "infopro", "predsim")
    refusals = {
        "etf": "a forward gradient's guess is the gradient of a trained auxiliary loss; the etf heads are fixed "
               "(method layerwise-bpfree)",
        "global": "a forward gradient projects a target on a local guess: it needs a local objective "
                  "(--guess gaussian/rademacher needs no head at all)",
        "coupling": "fwdgrad estimates each block's update by projecting a target gradient on a guess; a coupling "
                    "changes the update itself (its --target intermediate brings the next block's loss in)",
    }
    compilable = False
    compilable_reason = "forward-mode derivatives (JVPs)"
    fp16_reason = "its directional derivatives (JVPs) and estimates are not loss-scaled"

    target: str = option("global", "gradient target: global = end-to-end loss, local = the block's auxiliary "
                                   "loss, intermediate = the next block's auxiliary loss", TARGETS)
    guess: str = option("local", "gradient guess: local = trained auxiliary net (--head fg-cnn/fg-mlp/fg-linear), "
                                 "ntk = re-initialised every batch, fixed-ntk = never trained, gaussian/rademacher "
                                 "= random", GUESSES)
    space: str = option("weight", "insertion point: weight = project parameter gradients (eq. 4), "
                                  "activity = project the block-output gradient per sample (eq. 5)", SPACES)
    projection_granularity: str = option(
        "sample-tensor", "weight space: sample-tensor = project per sample and per parameter tensor, then sum "
                         "over the batch (the authors' code); block = one projection of the block's batch "
                         "gradient as one vector (a deviation)", GRANULARITIES)
    random_scale: str = option("authors", "random guesses: authors = <g,u>/(|u|^2+eps) u in weight space, <g,u> u "
                                          "in activity space (the authors' code); unbiased = <g,u> u in both "
                                          "(E = g, a much larger step in weight space)", RANDOM_SCALES)
    fwd_mode: str = option("emulate", "emulate = two backward passes, as the authors' code; jvp = the same update "
                                      "by forward-mode AD (no backward pass through later blocks, dgl's "
                                      "activation memory, more compute)", FWD_MODES)
    jvp_schedule: str = option("sweep", "--fwd-mode jvp with the global target: sweep = one forward sweep carries "
                                        "the tangents of all blocks below together (each primal once); per-block "
                                        "= one JVP through the rest of the network per block (less memory, "
                                        "more compute)", JVP_SCHEDULES)
    projection: str = option("guess", "guess = project on each sample's own guess; span = on the span of the "
                                      "batch's guesses (Table 6, --space activity)", PROJECTIONS)
    bn_jvp: str = option("exact", "per-sample derivatives in --fwd-mode jvp when a train-mode BatchNorm after "
                                  "the perturbation mixes samples: exact = one JVP per sample; single = one JVP, "
                                  "per-sample loss tangents (same batch total, not the same split)", BN_JVP)
    bn_stats: str = option("follow", "BatchNorm running statistics (what evaluation normalises with): follow = after "
                                     "each step they are carried by the change the step made to the batch statistics "
                                     "of its batch (one forward pass without graph) and averaged from the first "
                                     "batch; ema = PyTorch's running average of the batch statistics (the authors'), "
                                     "which lags the weights this estimator moves fast", BN_STATS)
    log_alignment: bool = option(False, "log align/k, the cosine between guess and global target per block "
                                        "(Figures 4-5); costs a backward pass unless emulate with global target")

    def __post_init__(self):
        for flag, value, choices in (("--target", self.target, TARGETS), ("--guess", self.guess, GUESSES),
                                     ("--space", self.space, SPACES),
                                     ("--projection-granularity", self.projection_granularity, GRANULARITIES),
                                     ("--random-scale", self.random_scale, RANDOM_SCALES),
                                     ("--fwd-mode", self.fwd_mode, FWD_MODES),
                                     ("--jvp-schedule", self.jvp_schedule, JVP_SCHEDULES),
                                     ("--projection", self.projection, PROJECTIONS), ("--bn-jvp", self.bn_jvp, BN_JVP),
                                     ("--bn-stats", self.bn_stats, BN_STATS)):
            if value not in choices:
                raise ValueError(f"unknown {flag} {value!r}; choose one of: {', '.join(choices)}")
        if self.guess in ("ntk", "fixed-ntk") and self.target != "global":
            raise ValueError(f"--guess {self.guess} uses an untrained auxiliary net, which defines no "
                             f"{self.target} target; use --target global")
        if self.projection == "span" and (self.space != "activity" or self.random_guess):
            raise ValueError("--projection span (Table 6) projects block-output gradients on the span of the "
                             "batch's local or NTK guesses: use it with --space activity and --guess local, ntk "
                             "or fixed-ntk")
        if self.projection_granularity == "block" and self.space == "activity":
            raise ValueError("--projection-granularity block is a weight-space option (activity space projects "
                             "per sample); use --space weight or drop it")
        if self.fwd_mode == "jvp" and self.target != "global" and not self.objective.head_cross_entropy:
            raise ValueError(f"--fwd-mode jvp takes the derivatives of a {self.target} target through a head's "
                             f"cross-entropy; the {self.objective.name} objective's loss is not one: use --fwd-mode "
                             f"emulate or --target global")
        self._tensors: dict[int, BlockTensors] = {}
        self._image: torch.Tensor | None = None  # the step's input, for objectives that reconstruct it

    @property
    def uses_aux_heads(self) -> bool:
        """Random guesses of a global target use no auxiliary net at all."""
        return self.objective.uses_aux_heads and not (self.random_guess and self.target == "global")

    @property
    def random_guess(self) -> bool:
        return self.guess in RANDOM_GUESSES

    @property
    def trains_heads(self) -> bool:
        return self.guess == "local" or self.target in ("local", "intermediate")

    @property
    def per_sample_tensor(self) -> bool:
        return self.space == "weight" and self.projection_granularity == "sample-tensor"

    @property
    def normalised(self) -> bool:
        """Divide by ||u||^2: always for local and NTK guesses; for random ones as the authors do."""
        return not self.random_guess or (self.random_scale == "authors" and self.space == "weight")

    def setup(self, net: ModularNet) -> None:
        super().setup(net)
        dropout = [m for m in net.model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
        if self.fwd_mode == "jvp" and dropout:
            raise UserError("fwdgrad --fwd-mode jvp re-runs later blocks to take directional derivatives, so "
                            "their dropout masks would differ from their own forward pass; use a model without "
                            "dropout (or --model-kwargs dropout=0) or --fwd-mode emulate")
        if self.per_sample_tensor:
            self._tensors = {m.index: BlockTensors(m.body) for m in net.local_modules[:-1]}

    # ------------------------------------------------------------------------ the step
    def train_step(self, net: ModularNet, x: torch.Tensor, y: torch.Tensor, active: Sequence[int]) -> Stats:
        if sorted(active) != list(range(len(net))):
            raise UserError("fwdgrad trains all modules together; it has a single phase")
        stats: Stats = {}
        self._image = x
        if self.guess == "ntk":  # a fresh random auxiliary net for every batch (section 3.1)
            for module in net.local_modules[:-1]:
                for m in module.head.modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
        before = running_statistics(net) if self.bn_stats == "follow" else None
        if self.fwd_mode == "jvp" and self.target == "global" and self.jvp_schedule == "sweep":
            self._sweep_step(net, x, y, stats)
        elif self.fwd_mode == "jvp":
            self._forward_mode_step(net, x, y, stats)
        else:
            self._emulated_step(net, x, y, stats)
        if before is not None:
            follow_running_statistics(before, lambda: self._evaluation_forward(net, x), net)
        return stats

    def _evaluation_forward(self, net: ModularNet, x: torch.Tensor) -> None:
        """What evaluation runs (every block, and the heads that are scored), for the batch
        statistics of the stepped network (`--bn-stats follow`)."""
        h = x
        for module in net:
            h = module.body(h)
            if module.is_last or self.uses_aux_heads:
                self.logits(module, h)

    def _recording(self, module: LocalModule, keep_outputs: bool):
        """Per-sample copies of block `module`'s tensors need each layer's input (and output)."""
        tensors = self._tensors.get(module.index)
        return tensors.recording(keep_outputs) if tensors else contextlib.nullcontext({})

    def _forward_mode_step(self, net: ModularNet, x: torch.Tensor, y: torch.Tensor, stats: Stats) -> None:
        global_targets = self._global_targets(net, x, y) if self.log_alignment else None
        # a random weight-space guess needs no backward pass through the block: no graph is built
        block_graph = self.space == "activity" or not self.random_guess
        h = x
        for module in net:
            inputs = h.detach()
            if module.is_last:  # the true gradient of the end-to-end loss
                output = module.body(inputs)
                logits = module.head(output)
                loss = F.cross_entropy(logits, y)
                record(stats, module.index, loss, logits, y)
                params = module.trainable_parameters()
                self._step(module, zip(params, _gradients(loss, params)))
                break
            with torch.set_grad_enabled(block_graph), self._recording(module, keep_outputs=block_graph) as recorded:
                output = module.body(inputs)
            body = [p for _, p in _trainable(module.body)]
            if self.space == "weight":
                # one backward pass through the head and the block gives the guess; the JVPs re-run
                # the block, so its graph is freed here
                local_loss = self._local_loss(module, output, y, stats)
                guess, head_grads = self._weight_guess(module, local_loss, body, recorded, len(inputs), keep_graph=False)
                output = output.detach()
            else:
                # the head gets its own graph (consumed by the guess); the block's graph waits for
                # the estimate, which is back-propagated through the block only
                head_input = detached_input(output, requires_grad=True)
                local_loss = self._local_loss(module, head_input, y, stats)
                guess, head_grads = self._guess(module, local_loss, [head_input], [output], keep_graph=False)
            oracle = _ForwardMode(module, inputs, output, self._target_path(net, module.index), y,
                                  exact=self.bn_jvp == "exact", tensors=self._tensors.get(module.index),
                                  recorded=recorded)
            estimate = self._estimate(guess, self._derivatives(guess, oracle))
            body_grads = estimate if self.space == "weight" else _gradients(output, body, estimate[0])
            if global_targets is not None:
                self._log_alignment(stats, module.index, global_targets[module.index], guess)
            self._step(module, [*zip(body, body_grads), *head_grads])
            h = output.detach()

    def _sweep_step(self, net: ModularNet, x: torch.Tensor, y: torch.Tensor, stats: Stats) -> None:
        """jvp with the global target in one forward sweep (`forward_sweep.py`): every block's
        directions are carried together through the blocks above it and read out at the end, then
        every block steps. The same update as `_forward_mode_step`."""
        global_targets = self._global_targets(net, x, y) if self.log_alignment else None
        block_graph = self.space == "weight" and not self.random_guess  # the guess back-propagates into the block
        sweep, pending, h = fs.TangentSweep(), [], x
        for module in net:
            inputs = h.detach()
            if module.is_last:  # the true gradient of the end-to-end loss, and the read-out of the sweep
                logits = module.head(module.body(inputs))
                loss = F.cross_entropy(logits, y)
                record(stats, module.index, loss, logits, y)
                params = module.trainable_parameters()
                last_pairs = list(zip(params, _gradients(loss, params)))
                found = sweep.read(lambda h: F.cross_entropy(module.head(module.body(h)), y, reduction="none"),
                                   inputs, module.body, module.head) if sweep.groups else []
                break
            with torch.set_grad_enabled(block_graph), self._recording(module, keep_outputs=block_graph) as recorded:
                output = module.body(inputs)
            body = [p for _, p in _trainable(module.body)]
            if self.space == "weight":
                local_loss = self._local_loss(module, output, y, stats)
                guess, head_grads = self._weight_guess(module, local_loss, body, recorded, len(inputs), keep_graph=False)
            else:  # the guess needs the head only; the block's graph is rebuilt for the estimate at the end
                head_input = detached_input(output, requires_grad=True)
                local_loss = self._local_loss(module, head_input, y, stats)
                guess, head_grads = self._guess(module, local_loss, [head_input], [output], keep_graph=False)
            if self.space == "weight" and not self.per_sample_tensor:  # one direction, in the same vmapped JVP
                tangents = {name: u for (name, _), u in zip(_trainable(module.body), guess)}
                group, masked = sweep.through_adding(module.body, inputs, tangents), False
            else:
                sweep.through(module.body, inputs)  # the directions of the blocks below
                downstream = [later.body for later in net.local_modules[module.index + 1:]] + [net[-1].head]
                directions, masked = self._output_directions(module, inputs, guess, recorded, downstream)
                group = sweep.add(directions)
            pending.append((module, inputs, guess, head_grads, group, masked))
            if global_targets is not None:
                self._log_alignment(stats, module.index, global_targets[module.index], guess)
            h = output.detach()

        updates = []
        for module, inputs, guess, head_grads, group, masked in pending:
            body = [p for _, p in _trainable(module.body)]
            derivatives = self._sweep_derivatives(fs.per_sample_from_loss_tangents(found[group], masked))
            estimate = self._estimate(guess, derivatives)
            if self.space == "activity":  # back-propagate the estimate through the block, re-run with its graph
                with frozen_batchnorm_statistics(module.body):
                    estimate = _gradients(module.body(inputs), body, estimate[0])
            updates.append((module, [*zip(body, estimate), *head_grads]))
        for module, pairs in [*updates, (net[-1], last_pairs)]:
            self._step(module, pairs)

    def _output_directions(self, module: LocalModule, inputs: torch.Tensor, guess: list[torch.Tensor], recorded,
                           downstream: list[nn.Module]) -> tuple[torch.Tensor, bool]:
        """Block `module`'s directions (activity space, or per sample and tensor) as tangents of its
        output, stacked on dim 0, and whether they are one per sample (`one_per_sample`: exact
        per-sample derivatives through a train-mode BN)."""
        exact = self.bn_jvp == "exact"
        if self.space == "activity":
            u = guess[0]
            if self.projection == "span":
                directions = fg.span_basis(u).view(-1, 1, *u.shape[1:]).expand(-1, *u.shape).contiguous()
            else:
                directions = u.unsqueeze(0)
            masked = exact and fg.couples_samples(downstream)
            return (fs.one_per_sample(directions) if masked else directions), masked
        tensors = self._tensors[module.index]
        masked = exact and fg.couples_samples([module.body, *downstream])  # conservative, as per block
        directions = []
        for index, ((layer, _, _), u) in enumerate(zip(tensors.tensors, guess)):
            tangent = tensors.output_tangent(recorded, index, u).unsqueeze(0)
            directions.append(fs.layer_directions(module.body, inputs, layer,
                                                  fs.one_per_sample(tangent) if masked else tangent))
        return torch.cat(directions), masked

    def _sweep_derivatives(self, per_sample: torch.Tensor):
        """`_derivatives`' result from the sweep's per-sample derivatives, one row per direction."""
        if self.per_sample_tensor:
            return list(per_sample)
        if self.space == "weight":
            return per_sample[0].sum()
        return per_sample.T if self.projection == "span" else per_sample[0]

    def _emulated_step(self, net: ModularNet, x: torch.Tensor, y: torch.Tensor, stats: Stats) -> None:
        blocks = net.local_modules[:-1]
        outputs, recorded, h = [], [], x
        with contextlib.ExitStack() as recordings:  # one graph through the whole network, as for BP
            for module in blocks:
                recorded.append(recordings.enter_context(self._recording(module, keep_outputs=True)))
            for module in net:
                h = module.body(h)
                outputs.append(h)
        last = net[-1]
        logits = last.head(h)
        loss = F.cross_entropy(logits, y)
        record(stats, last.index, loss, logits, y)
        local_losses = [self._local_loss(m, outputs[m.index], y, stats) for m in blocks]
        bodies = [[p for _, p in _trainable(m.body)] for m in blocks]
        # what the losses are differentiated against: the block's parameters (block granularity),
        # its layers' outputs (turned into per-sample parameter gradients), or its output h
        if self.per_sample_tensor:
            wrts = [self._tensors[m.index].outputs(recorded[m.index]) for m in blocks]
        elif self.space == "weight":
            wrts = bodies
        else:
            wrts = [[outputs[m.index]] for m in blocks]

        # backward pass 1: the end-to-end loss, for the last block's true gradient and the global targets
        last_params = last.trainable_parameters()
        global_targets = None
        if self.target == "global" or self.log_alignment:
            flat = [t for wrt in wrts for t in wrt]
            grads = _gradients(loss, flat + last_params, retain=True)
            global_targets, last_grads = _split(grads[:len(flat)], wrts), grads[len(flat):]
        else:
            last_grads = _gradients(loss, last_params, retain=True)

        updates = []
        for module, wrt, body in zip(blocks, wrts, bodies):
            k = module.index
            # backward pass 2 (per block, through the block and its head only): the guess
            if self.space == "weight":
                guess, head_grads = self._weight_guess(module, local_losses[k], body, recorded[k], len(x),
                                                       keep_graph=True)
            else:
                guess, head_grads = self._guess(module, local_losses[k], wrt, wrt, keep_graph=True)
            if global_targets is not None:  # per sample and tensor: made here, B x one block's parameters at a time
                global_target, global_targets[k] = global_targets[k], None
                if self.per_sample_tensor:
                    global_target = self._tensors[k].gradients(recorded[k], global_target)
            if self.target == "global":
                target = global_target
            else:
                target_loss = local_losses[k] if self.target == "local" else (
                    local_losses[k + 1] if k + 1 < len(blocks) else loss)
                target = _gradients(target_loss, wrt, retain=True)
                if self.per_sample_tensor:
                    target = self._tensors[k].gradients(recorded[k], target)
            estimate = self._estimate(guess, self._derivatives(guess, _ExplicitTarget(target)))
            body_grads = estimate if self.space == "weight" else _gradients(outputs[k], body, estimate[0], retain=True)
            if self.log_alignment:
                batch_target = [g.sum(0) for g in global_target] if self.per_sample_tensor else global_target
                self._log_alignment(stats, k, batch_target, guess)
            updates.append((module, [*zip(body, body_grads), *head_grads]))
        updates.append((last, zip(last_params, last_grads)))
        for module, pairs in updates:  # only now: stepping earlier would change tensors the graph still needs
            self._step(module, pairs)

    # --------------------------------------------------------------------------- parts
    def _local_loss(self, module: LocalModule, output: torch.Tensor, y: torch.Tensor, stats: Stats):
        """The objective's loss of block k: what the guess (and a local target) differentiates."""
        if not self.uses_aux_heads:
            return None
        return self.objective.local_loss(module, None, output, y, {IMAGE: self._image}, stats)

    def _guess(self, module: LocalModule, local_loss, wrt: list[torch.Tensor], noise_like: list[torch.Tensor],
               keep_graph: bool):
        """The guess (a list like `wrt`, or random noise shaped like `noise_like`) and the (parameter,
        gradient) pairs of the auxiliary net, which learns from its own loss when it is trained (a
        local guess or a local target)."""
        head = module.head.parameters() if self.trains_heads else []
        head = [p for p in head if p.requires_grad]
        if self.random_guess:
            guess = [fg.random_guess(t, self.guess) for t in noise_like]
            head_grads = _gradients(local_loss, head, retain=keep_graph) if head else []
        else:
            found = _gradients(local_loss, [*wrt, *head], retain=keep_graph)
            guess, head_grads = found[:len(wrt)], found[len(wrt):]
        return [g.detach() for g in guess], list(zip(head, head_grads))

    def _weight_guess(self, module: LocalModule, local_loss, body: list[torch.Tensor], recorded, batch: int,
                      keep_graph: bool):
        """The guess of dL/dtheta_k: of the block's parameters (block granularity), or one per sample
        and tensor, (B, *shape) each: the per-sample gradients of the local loss, or noise."""
        if not self.per_sample_tensor:
            return self._guess(module, local_loss, body, body, keep_graph)
        tensors = self._tensors[module.index]
        noise_like = [p.new_empty((batch, *p.shape)) for p in body]
        wrt = [] if self.random_guess else tensors.outputs(recorded)
        guess, head_grads = self._guess(module, local_loss, wrt, noise_like, keep_graph)
        return (guess if self.random_guess else tensors.gradients(recorded, guess)), head_grads

    def _target_path(self, net: ModularNet, k: int) -> nn.Module:
        """What maps block k's output to the logits of its target loss."""
        if self.target == "local":
            return net[k].head
        if self.target == "intermediate":
            return nn.Sequential(net[k + 1].body, net[k + 1].head)
        return nn.Sequential(*[m.body for m in net.local_modules[k + 1:]], net[-1].head)

    def _derivatives(self, guess: list[torch.Tensor], oracle):
        """What the estimate needs of the target, from an oracle: <g, u> (block granularity), one
        (B,) tensor of <g_i^t, u_i^t> per tensor (sample-tensor), <g_i, u_i> (activity), or
        <g_i, v_m> as a (B, basis size) tensor (span)."""
        if self.per_sample_tensor:
            return oracle.per_tensor(guess)
        if self.space == "weight":
            return oracle.weight(guess)
        u = guess[0]
        if self.projection == "span":
            return torch.stack([oracle.per_sample(v.view(u.shape[1:]).expand_as(u).contiguous())
                                for v in fg.span_basis(u)], dim=1)
        return oracle.per_sample(u)

    def _estimate(self, guess: list[torch.Tensor], derivatives) -> list[torch.Tensor]:
        if self.per_sample_tensor:
            return fg.sample_tensor_estimate(derivatives, guess, self.normalised)
        if self.space == "weight":
            return fg.weight_estimate(derivatives, guess, self.normalised)
        u = guess[0]
        if self.projection == "span":
            return [fg.span_estimate(derivatives, fg.span_basis(u), u.shape)]
        return [fg.activity_estimate(derivatives, u, self.normalised)]

    def _global_targets(self, net: ModularNet, x: torch.Tensor, y: torch.Tensor) -> list[list[torch.Tensor]]:
        """dL/dtheta_k or dL/dh_k of the end-to-end loss for every block but the last, for the
        alignment diagnostic of fwd_mode=jvp: a BP forward and backward (BN statistics untouched)."""
        with frozen_batchnorm_statistics(net.model):
            h, wrts = x, []
            for module in net.local_modules[:-1]:
                h = module.body(h)
                wrts.append([p for _, p in _trainable(module.body)] if self.space == "weight" else [h])
            loss = F.cross_entropy(net[-1].head(net[-1].body(h)), y)
        return _split(_gradients(loss, [t for wrt in wrts for t in wrt]), wrts)

    def _log_alignment(self, stats: Stats, k: int, target: list[torch.Tensor], guess: list[torch.Tensor]) -> None:
        """Cosine between guess and global target (Figures 4-5): of the block's parameter vectors in
        weight space (per-sample guesses and targets summed over the batch), the mean over samples of
        per-sample cosines in activity space."""
        if self.space == "activity":
            value = fg.mean_sample_cosine(target[0], guess[0])
        elif self.per_sample_tensor:
            value = fg.cosine(target, [u.sum(0) for u in guess])
        else:
            value = fg.cosine(target, guess)
        stats[f"align/{k}"] = value.detach()

    @staticmethod
    def _step(module: LocalModule, pairs) -> None:
        module.optimizer.zero_grad(set_to_none=True)
        for parameter, gradient in pairs:  # an estimate made under --amp has the autocast dtype
            parameter.grad = gradient.detach().to(parameter.dtype)
        module.optimizer.step()
        if module.free_gradients:  # freed as soon as applied, as LocalModule.step
            module.optimizer.zero_grad(set_to_none=True)
