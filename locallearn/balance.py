"""`--split balanced`: cut the layers into modules (and pipeline stages) of equal measured time.

An even split by layer count is not even in time: on a CPU, ResNet-32's 32x32 layers cost more
per FLOP than its 8x8 ones, and an auxiliary head at a wide, high-resolution layer costs more than
one at a narrow layer. So the training step itself is timed, layer by layer, and the cut is chosen
from those times.

**What is measured** (`profile_layers`), on a copy of the model with a fresh rule (the run's own
model, weights, RNG and rule state are untouched), on one training batch of the run's input shape
and batch size, once to warm up and then `repeats` times, for every layer i:

- `step_seconds[i]`: the rule's own local step (`rule.module_step`: forward, local loss, backward,
  optimizer step) of a module that holds layer i alone and ends with the head a module ending at
  layer i would carry (built by `rule.build_head`; the model's classifier after the last layer);
- `head_seconds[i]`: that head alone: the rule's `local_loss` on layer i's output, its backward
  (into that output, as inside a module) and the head's optimizer step;
- `layer_seconds[i]`: layer i as an inner layer of a module: forward, backward to its weights and
  to its input (which the first layer of a module does not need), its optimizer step.

Each is the least of its `repeats` timings (other processes only ever add time). On a CPU with
one thread the clock is the thread's CPU time, so a shared machine's load does not enter the
profile; otherwise it is wall time (synchronized on CUDA).

**What a module costs**: a module of layers a..b-1 runs its first layer as the one-layer step
did, its inner layers, and the one head at its end:

    cost(a, b) = step_seconds[a] - head_seconds[a] + sum(layer_seconds[a+1:b]) + head_seconds[b-1]

so every candidate cut is charged for the head it would add at exactly that place, and a one-layer
module costs exactly its measured step. Not in the profile: what a rule does beyond its local loss
across modules (SGR's double backward of inner layers, BackLink's recomputed links beyond one
layer: a rule whose `setup` refuses one-layer modules is profiled with the plain local step), the
data pipeline of the first stage, and moving activations between pipeline stages (a gloo
send/recv of ResNet-32's largest boundary tensor costs ~3 ms of CPU on each side).

The profile costs about 3 x (`repeats` + 1) training steps of the whole model, once, before
training. A pipeline's rank 0 profiles alone and hands the profile to the other ranks
(distributed/pipeline.py): ranks that profiled at the same time on one CPU would slow each other's
memory-bound layers down far more than the stages of a running pipeline do, and would each get a
different profile.

**The cut** (`balanced_starts`): a pipeline runs its stages at the same time, so its throughput is
set by the slowest stage, and the pipeline gives stage s the s-th contiguous group of modules,
`groups[s]` of them (`stage_modules`: K modules spread evenly over the stages). The cut minimises
the time of the slowest stage, a stage's time being the sum of its modules' costs; inside a stage,
the modules are cut as equal in time as they can be (the same rule one level down). Without a
pipeline every module counts as its own stage, so the modules themselves are made equal. Both
levels are the exact `minimax_partition`, with ties broken towards equal parts.
"""
from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .errors import UserError
from .network import ModularNet
from .optim import make_optimizer

PROFILE_REPEATS = 3  # timed passes over the layers after one warm-up pass


@dataclass
class LayerProfile:
    """Seconds per training step of each layer's parts (see the module docstring)."""

    step_seconds: list[float]
    layer_seconds: list[float]
    head_seconds: list[float]
    clock: str = "wall"

    def __post_init__(self):
        self._inner = [0.0]
        for seconds in self.layer_seconds:
            self._inner.append(self._inner[-1] + seconds)

    def module_seconds(self, a: int, b: int) -> float:
        """The time of one training step of a module holding layers a..b-1 with the head at its end."""
        first = max(self.step_seconds[a] - self.head_seconds[a], 0.0)
        return first + (self._inner[b] - self._inner[a + 1]) + self.head_seconds[b - 1]

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------- profiling
def _clock(device: torch.device) -> tuple[str, Callable[[], float]]:
    if device.type == "cuda":
        def wall():
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return "wall", wall
    if torch.get_num_threads() == 1:
        return "thread CPU time", time.thread_time
    return "wall", time.perf_counter


def check_profilable(rule, cfg, n_layers: int) -> None:
    """A one-line UserError unless `rule` (a fresh instance) trains one-layer modules with its local step."""
    from .rules import LocalRule

    if not isinstance(rule, LocalRule) or type(rule).train_step is not LocalRule.train_step:
        raise UserError(f"--split balanced times the local step of methods that train module by module (dgl, sgr, "
                        f"...); method {cfg.method} has its own whole-network step: give the cut with --split a,b,c")
    layer_ranges = [range(i, i + 1) for i in range(n_layers)]
    if rule.arrange_modules(list(layer_ranges), n_layers) != layer_ranges:
        raise UserError(f"method {cfg.method} arranges its own modules (e.g. --aux-layout authors), so --split "
                        "balanced cannot choose them; give the cut with --split a,b,c or use --split layer")


def _probe_net(model: nn.Module, rule, cfg, device: torch.device) -> tuple[ModularNet, Callable]:
    """A copy of `model` as one module per layer, each with the head a module ending there would carry
    (the rule's, the classifier last) and its own optimizers; and the local step that trains it."""
    n_layers = len(model.layers)
    check_profilable(rule, cfg, n_layers)
    layer_ranges = [range(i, i + 1) for i in range(n_layers)]
    model = copy.deepcopy(model).to(device)
    probe = ModularNet(model, layer_ranges, lambda k, layers: rule.build_head(model, k, layers, cfg.head,
                                                                              cfg.head_kwargs))
    module_step = rule.module_step
    try:
        rule.setup(probe)
    except UserError:  # the rule refuses one-layer modules (BackLink's links of several layers)
        module_step = rule.plain_module_step
    probe.to(device).train()
    for module in probe:
        module.optimizer = make_optimizer(module.trainable_parameters(), cfg)
        module.layer_optimizer = make_optimizer([p for p in module.body.parameters() if p.requires_grad], cfg)
        module.head_optimizer = make_optimizer([p for p in module.head.parameters() if p.requires_grad], cfg)
    return probe, module_step


def _inner_layer_step(module, inputs: torch.Tensor, cotangent: torch.Tensor) -> None:
    """What an inner layer of a module does: forward, backward to its weights and input, its update."""
    module.layer_optimizer.zero_grad(set_to_none=True)
    module.body(inputs).backward(cotangent)
    module.layer_optimizer.step()


def _head_step(local_loss, module, inputs, outputs: torch.Tensor, y: torch.Tensor, message: dict) -> None:
    """What the head at a module's end does: the rule's local loss, backward into the module's
    output (a leaf that requires its gradient), the head's update."""
    module.head_optimizer.zero_grad(set_to_none=True)
    local_loss(module, inputs, outputs, y, message, {}).backward()
    module.head_optimizer.step()


def profile_layers(model: nn.Module, rule, cfg, x: torch.Tensor, y: torch.Tensor,
                   repeats: int = PROFILE_REPEATS) -> LayerProfile:
    """Time every layer of `model` (a LayeredModel) as `rule` (a fresh LocalRule instance, used up
    here) trains it on the batch (x, y); `cfg` gives the head and optimizer settings. The model,
    its parameters and the RNG streams are left as they were."""
    device = x.device
    clock_name, clock = _clock(device)

    def timed(work: Callable[[], object]) -> tuple[float, object]:
        started = clock()
        result = work()
        return clock() - started, result

    n_layers = len(model.layers)
    kept = {name: [math.inf] * n_layers for name in ("step", "layer", "head")}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        probe, module_step = _probe_net(model, rule, cfg, device)
        seen: dict = {}  # what the rule's step handed its local loss (InfoPro's image rides in the message)
        local_loss = rule.local_loss

        def recording_loss(module, inputs, outputs, labels, message, stats):
            seen.update(inputs=inputs, message=message)
            return local_loss(module, inputs, outputs, labels, message, stats)

        rule.local_loss = recording_loss

        def time_parts(i: int, inputs, outputs, loss_inputs, loss_message, keep: bool) -> None:
            """Layer i as an inner layer, and its head alone. Run after the rule's step of module i + 1,
            which may still use module i's parameters (BackLink's link) and must see them unchanged."""
            inputs = inputs.detach().requires_grad_(i > 0)  # an inner layer passes the gradient on
            cotangent = torch.randn_like(outputs)
            layer, _ = timed(lambda: _inner_layer_step(probe[i], inputs, cotangent))
            leaf = outputs.detach().requires_grad_(True)
            head, _ = timed(lambda: _head_step(local_loss, probe[i], loss_inputs, leaf, y, loss_message))
            if keep:
                kept["layer"][i], kept["head"][i] = min(kept["layer"][i], layer), min(kept["head"][i], head)

        for repeat in range(repeats + 1):  # the first pass warms up allocators and caches
            h, message, pending = x, {}, None
            for i, module in enumerate(probe):
                seen.clear()
                seen.update(inputs=h.detach(), message=message)
                step, (outputs, next_message) = timed(lambda: module_step(module, h, y, message, {}))
                if repeat:
                    kept["step"][i] = min(kept["step"][i], step)
                if pending is not None:
                    time_parts(*pending, keep=bool(repeat))
                pending = (i, h, outputs, seen["inputs"], seen["message"])
                h, message = outputs, next_message
            rule.finish_step(message, {})
            time_parts(*pending, keep=bool(repeat))
    return LayerProfile(kept["step"], kept["layer"], kept["head"], clock_name)


# ----------------------------------------------------------------------------------------- the cut
def minimax_partition(n_items: int, n_parts: int, cost: Callable[[int, int, int], float]) -> list[int]:
    """The first items of the `n_parts` contiguous, non-empty parts of items 0..n_items-1 whose
    largest `cost(k, a, b)` (part k holding items a..b-1) is smallest; among those, the one with the
    least sum of squared costs (the most equal parts); remaining ties go to the earliest cut.

    Exact, by dynamic programming over prefixes: O(n_parts * n_items^2) evaluations of `cost`
    (each is evaluated once). `cost` may return math.inf for a part that is not allowed.
    """
    if not 1 <= n_parts <= n_items:
        raise ValueError(f"cannot cut {n_items} items into {n_parts} non-empty parts")
    cost = functools.lru_cache(maxsize=None)(cost)
    inf = math.inf
    first_end = lambda k: k + 1                           # noqa: E731  part k ends at item >= k + 1 ...
    last_end = lambda k: n_items - (n_parts - 1 - k)      # noqa: E731  ... and leaves an item per later part

    # pass 1: worst[k][j] = the least possible largest cost of parts 0..k covering items 0..j-1
    worst = [[inf] * (n_items + 1) for _ in range(n_parts)]
    for j in range(first_end(0), last_end(0) + 1):
        worst[0][j] = cost(0, 0, j)
    for k in range(1, n_parts):
        for j in range(first_end(k), last_end(k) + 1):
            worst[k][j] = min(max(worst[k - 1][i], cost(k, i, j)) for i in range(k, j))
    bound = worst[-1][n_items]
    if bound == inf:
        raise ValueError("no partition has a finite cost")

    # pass 2: among partitions whose every part costs at most `bound`, the least sum of squares
    squares = [[inf] * (n_items + 1) for _ in range(n_parts)]
    start = [[0] * (n_items + 1) for _ in range(n_parts)]
    for j in range(first_end(0), last_end(0) + 1):
        c = cost(0, 0, j)
        if c <= bound:
            squares[0][j] = c * c
    for k in range(1, n_parts):
        for j in range(first_end(k), last_end(k) + 1):
            for i in range(k, j):
                c = cost(k, i, j)
                if c <= bound and squares[k - 1][i] + c * c < squares[k][j]:
                    squares[k][j], start[k][j] = squares[k - 1][i] + c * c, i
    starts, j = [], n_items
    for k in range(n_parts - 1, 0, -1):
        j = start[k][j]
        starts.append(j)
    return [0] + starts[::-1]


def balanced_starts(n_layers: int, module_cost: Callable[[int, int], float], groups: Sequence[int]) -> list[int]:
    """The first layer of every module: stage s holds the next `groups[s]` modules; the slowest
    stage (the sum of its modules' costs) is made as fast as possible, and inside each stage the
    modules are made as equal as possible. `groups = [1] * K`: K modules of equal cost."""
    if len(groups) == sum(groups):
        return minimax_partition(n_layers, len(groups), lambda k, a, b: module_cost(a, b))

    @functools.lru_cache(maxsize=None)
    def inner(a: int, b: int, modules: int) -> tuple[int, ...] | None:
        if b - a < modules:
            return None
        relative = minimax_partition(b - a, modules, lambda k, i, j: module_cost(a + i, a + j))
        return tuple(a + r for r in relative)

    def stage_cost(s: int, a: int, b: int) -> float:
        starts = inner(a, b, groups[s])
        if starts is None:
            return math.inf
        return sum(module_cost(i, j) for i, j in zip(starts, starts[1:] + (b,)))

    stage_starts = minimax_partition(n_layers, len(groups), stage_cost)
    bounds = stage_starts + [n_layers]
    return [start for s in range(len(groups)) for start in inner(bounds[s], bounds[s + 1], groups[s])]


def plan_balanced_split(profile: LayerProfile | None, n_layers: int, groups: Sequence[int]) -> dict:
    """The record a run keeps of its balanced cut (checkpoint and result.json): `split` is the same
    cut as an explicit `--split a,b,c` (None for one module); the predicted seconds per module and
    stage come from `profile` (None when the cut is forced: one module, or one layer per module)."""
    n_modules = sum(groups)
    if profile is None:
        starts = list(range(n_layers)) if n_modules == n_layers else [0]
    else:
        starts = balanced_starts(n_layers, profile.module_seconds, groups)
    bounds = starts + [n_layers]
    record = {"split": ",".join(map(str, starts[1:])) or None, "starts": starts, "stage_groups": list(groups),
              "profile": profile.to_dict() if profile else None, "module_seconds": None, "stage_seconds": None}
    if profile is not None:
        modules = [profile.module_seconds(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        ends = [sum(groups[:s + 1]) for s in range(len(groups))]
        record["module_seconds"] = modules
        record["stage_seconds"] = [sum(modules[e - g:e]) for g, e in zip(groups, ends)]
    return record
