"""fwdgrad's weight-space estimate against the authors' (github.com/streethagore/ForwardLocalGradient:
trainer/hooks.py, per_sample_gradients.py, gradients.py, estimators.py), restated here in our words:

- every Linear, Conv and BatchNorm layer of a block but the last keeps its input from the forward
  pass and receives dL/d(its output) from a module backward hook;
- per-sample gradients of its weight and bias from those two: Linear: grad_out_i x_i^T and
  grad_out_i; Conv: grad_out_i (channels x positions) times the unfolded input patches of sample
  i, and grad_out_i summed over positions; BatchNorm: the normalised input (batch statistics)
  times grad_out_i summed over positions, and grad_out_i summed over positions;
- target pass: the end-to-end loss back-propagated through the whole network; guess pass: every
  block re-run on its detached input, its auxiliary loss back-propagated through itself (BN
  normalising with the batch statistics); random guesses: Gaussian noise shaped like the
  per-sample gradients, drawn layer by layer, weight before bias;
- per parameter tensor: sum over the batch of <g_i, u_i> / (||u_i||^2 + 1e-16) u_i.

Not ported: the authors' slip that writes the bias estimate into weight.grad.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import tiny_config
from locallearn import Trainer

PLAIN_SGD = dict(lr=1.0, momentum=0.0, weight_decay=0.0)  # a parameter moves by minus the gradient given
TINY_RESNET = dict(model="resnet20", model_kwargs={"width": 4, "depth": 8})  # conv + BN2d, 4 layers
MLP_BN = dict(model="mlp", model_kwargs={"depth": 4, "width": 8, "batchnorm": True}, head="mlp",
              head_kwargs={"width": 8})  # linear + BN1d
MLP = dict(model="mlp", model_kwargs={"depth": 4, "width": 8, "batchnorm": False}, head="mlp",
           head_kwargs={"width": 8})  # linear with bias, nothing couples samples
LAYER_TYPES = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)


def per_sample_layer_gradients(layer, inputs, grad_out):
    """The authors' per-sample weight and bias gradients of one layer."""
    n = inputs.shape[0]
    if isinstance(layer, nn.Linear):
        found = {"weight": torch.einsum("bo,bi->boi", grad_out, inputs), "bias": grad_out}
    elif isinstance(layer, nn.Conv2d):
        patches = F.unfold(inputs, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        flat_grad = grad_out.reshape(n, layer.out_channels, -1)
        found = {"weight": torch.einsum("bop,bkp->bok", flat_grad, patches).reshape(n, *layer.weight.shape),
                 "bias": flat_grad.sum(2)}
    else:
        reduce = [0] + list(range(2, inputs.dim()))
        mean = inputs.mean(reduce, keepdim=True)
        var = inputs.var(reduce, unbiased=False, keepdim=True)
        normalised = (inputs - mean) / torch.sqrt(var + layer.eps)
        found = {"weight": (normalised * grad_out).flatten(2).sum(2) if inputs.dim() > 2 else normalised * grad_out,
                 "bias": grad_out.flatten(2).sum(2) if inputs.dim() > 2 else grad_out}
    return {name: found[name] for name in ("weight", "bias") if getattr(layer, name) is not None}


def authors_estimate(net, x, y, guess):
    """The authors' update of every block but the last (dict: parameter name in the model -> gradient),
    computed on a copy of the network with plain (not in-place) ReLUs, which module backward hooks need."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False  # batch statistics, nothing counted (the guess pass of the authors)
    blocks = list(net)[:-1]
    layers = [[m for m in block.body.modules() if isinstance(m, LAYER_TYPES)] for block in blocks]
    inputs, grads = {}, {"target": {}, "guess": {}}
    dest = ["target"]
    handles = []
    for m in (m for group in layers for m in group):
        handles.append(m.register_forward_hook(lambda mod, args, out: inputs.__setitem__(mod, args[0].detach())))
        handles.append(m.register_full_backward_hook(
            lambda mod, grad_in, grad_out: grads[dest[0]].__setitem__(mod, grad_out[0].detach())))

    # target pass: the end-to-end loss (inputs that require grad keep module backward hooks quiet)
    F.cross_entropy(_logits(net, x.clone().requires_grad_()), y).backward()
    targets = {m: per_sample_layer_gradients(m, inputs[m], grads["target"][m]) for group in layers for m in group}
    # guess pass
    if guess == "local":
        dest[0] = "guess"
        h = x
        for block in blocks:
            h = block.body(h.detach().requires_grad_())
            F.cross_entropy(block.head(h), y).backward()
        guesses = {m: per_sample_layer_gradients(m, inputs[m], grads["guess"][m]) for group in layers for m in group}
    else:
        torch.manual_seed(0)
        guesses = {m: {name: torch.randn_like(g) for name, g in targets[m].items()} for group in layers for m in group}
    for handle in handles:
        handle.remove()

    estimate = {}
    for block, group in zip(blocks, layers):
        names = {id(p): name for name, p in block.body.named_parameters()}
        for m in group:
            for name, g in targets[m].items():
                u = guesses[m][name]
                scale = (g * u).flatten(1).sum(1) / ((u * u).flatten(1).sum(1) + 1e-16)
                estimate[(block.index, names[id(getattr(m, name))])] = (scale.view(-1, *[1] * (u.dim() - 1)) * u).sum(0)
    return estimate


def _logits(net, x):
    h = x
    for module in net:
        h = module.body(h)
    return net[-1].head(h)


def rule_update(settings, batch, **options):
    config = dict(method="fwdgrad", modules=3, head="fg-linear", rule_options=options, **PLAIN_SGD)
    trainer = Trainer(tiny_config(**{**config, **settings}))
    x, y = next(trainer.data.train_batches(batch, 0, "none", torch.Generator()))
    reference = authors_estimate(trainer.net, x, y, options.get("guess", "local"))
    before = {(m.index, n): p.detach().clone() for m in list(trainer.net)[:-1] for n, p in m.body.named_parameters()}
    torch.manual_seed(0)
    trainer.rule.train_step(trainer.net, x, y, list(range(len(trainer.net))))
    params = {(m.index, n): p for m in list(trainer.net)[:-1] for n, p in m.body.named_parameters()}
    return {key: before[key] - params[key].detach() for key in before}, reference


@pytest.mark.parametrize("settings,batch,options", [
    (TINY_RESNET, 8, dict(fwd_mode="emulate")),
    (TINY_RESNET, 8, dict(fwd_mode="emulate", guess="gaussian")),
    (TINY_RESNET, 4, dict(fwd_mode="jvp")),  # one JVP per sample and tensor: BN couples the samples
    (MLP_BN, 8, dict(fwd_mode="emulate")),
    (MLP, 8, dict(fwd_mode="jvp")),  # one JVP per tensor
    (MLP, 8, dict(fwd_mode="jvp", guess="gaussian")),
])
def test_weight_space_estimate_is_the_authors(settings, batch, options):
    ours, reference = rule_update(settings, batch, **options)
    assert ours.keys() == reference.keys()
    for key in ours:  # float32 rounding: <g_i, u_i> of a random u_i cancels, so 1e-3 of the tensor's scale
        scale = float(reference[key].abs().max())
        assert scale > 0, key
        torch.testing.assert_close(ours[key], reference[key], rtol=1e-3, atol=1e-3 * scale, msg=str(key))
    # one projection per block (the deviation) is a different estimate, so this test tells them apart
    block, _ = rule_update(settings, batch, **options, projection_granularity="block")
    relative = [float((block[k] - reference[k]).norm() / reference[k].norm()) for k in ours]
    assert max(relative) > 0.1
