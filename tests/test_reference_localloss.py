"""The MLP rows of Nøkland & Eidnes's table (anokland/local-loss, train.py) against a port of their
code, in our own words: `LocalLossBlockLinear` (linear with bias -> BN -> activation -> dropout; the
local losses read the block's output before dropout), `Net` (the output layer on the detached last
hidden block, its weight zeroed under local losses), their training step (per block: local loss,
backward, Adam step, detach; then the output layer's cross-entropy, times 1 - beta for predsim),
their BP step, and their multi-step learning-rate decay. Our side: `mlp bias=True dropout=P
output_layer=True`, `--split layer`, method `predsim` with beta 0 (their `pred`), 1 (`sim`) or 0.99
(`predsim`), method `bp`, `--sched multistep`. Dropout masks are drawn in the same order on both
sides, so the steps agree to rounding with dropout on."""
from bisect import bisect_right

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import tiny_config
from locallearn import Trainer
from locallearn.optim import lr_factor

HIDDEN, LAYERS, CLASSES, SIDE = 24, 3, 10, 6
DROPOUT = 0.2
LR = 5e-4            # their Fashion-MNIST lr
LEAKY_SLOPE = 0.01   # their nn.LeakyReLU(negative_slope=0.01)


def authors_similarity(x: torch.Tensor) -> torch.Tensor:
    """Their similarity_matrix for flat features: rows centred, divided by 1e-8 + norm, Gram, clamp."""
    centred = x - x.mean(dim=1).unsqueeze(1)
    normed = centred / (1e-8 + torch.sqrt(torch.sum(centred ** 2, dim=1))).unsqueeze(1)
    return normed.matmul(normed.transpose(1, 0)).clamp(-1, 1)


class AuthorsBlock(nn.Module):
    """One LocalLossBlockLinear with its own Adam, for loss_sup in pred, sim, predsim (or BP)."""

    def __init__(self, n_in, n_out, loss_sup, leaky, backprop):
        super().__init__()
        self.loss_sup, self.backprop = loss_sup, backprop
        self.encoder = nn.Linear(n_in, n_out, bias=True)
        if not backprop and loss_sup in ("pred", "predsim"):
            self.decoder_y = nn.Linear(n_out, CLASSES)
            self.decoder_y.weight.data.zero_()
        if not backprop and loss_sup in ("sim", "predsim"):
            self.linear_loss = nn.Linear(n_out, n_out, bias=False)
        self.bn = nn.BatchNorm1d(n_out)
        self.nonlin = nn.LeakyReLU(LEAKY_SLOPE, inplace=True) if leaky else nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(DROPOUT)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=LR, weight_decay=0.0)

    def forward(self, x, y, beta):
        h = self.nonlin(self.bn(self.encoder(x)))
        h_return = self.dropout(h)
        if self.backprop or not self.training:
            return h_return
        onehot = F.one_hot(y, CLASSES).float()
        if self.loss_sup == "pred":
            loss = F.cross_entropy(self.decoder_y(h), y)
        elif self.loss_sup == "sim":
            loss = F.mse_loss(authors_similarity(self.linear_loss(h)), authors_similarity(onehot).detach())
        else:
            loss = (1 - beta) * F.cross_entropy(self.decoder_y(h), y) + \
                beta * F.mse_loss(authors_similarity(self.linear_loss(h)), authors_similarity(onehot).detach())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return h_return.detach()


class AuthorsNet(nn.Module):
    """Their Net: flatten, the blocks, layer_out; one optimizer for layer_out (local) or everything (BP)."""

    def __init__(self, loss_sup, leaky=False, backprop=False, beta=0.99):
        super().__init__()
        self.loss_sup, self.backprop, self.beta = loss_sup, backprop, beta
        widths = [SIDE * SIDE] + [HIDDEN] * LAYERS
        self.blocks = nn.ModuleList(AuthorsBlock(a, b, loss_sup, leaky, backprop) for a, b in zip(widths, widths[1:]))
        self.layer_out = nn.Linear(HIDDEN, CLASSES)
        if not backprop:
            self.layer_out.weight.data.zero_()
        trained = self.parameters() if backprop else self.layer_out.parameters()
        self.optimizer = torch.optim.Adam(trained, lr=LR, weight_decay=0.0)

    def step(self, x, y):
        self.optimizer.zero_grad()
        for block in self.blocks:
            block.optimizer.zero_grad()
        h = x.view(x.size(0), -1)
        for block in self.blocks:
            h = block(h, y, self.beta)
        loss = F.cross_entropy(self.layer_out(h), y)
        if self.loss_sup == "predsim" and not self.backprop:
            loss = loss * (1 - self.beta)
        loss.backward()
        self.optimizer.step()


def ours(method: str, beta: float, leaky: bool) -> Trainer:
    options = {} if method == "bp" else {"predsim_beta": beta, "predsim_scale_last": beta not in (0.0, 1.0),
                                         "predsim_zero_output": True}
    return Trainer(tiny_config(
        method=method, model="mlp", split="even" if method == "bp" else "layer", modules=None,
        optimizer="adam", lr=LR, weight_decay=0.0, batch_size=32, measure=False,
        model_kwargs={"depth": LAYERS, "width": HIDDEN, "bias": True, "dropout": DROPOUT, "output_layer": True,
                      "activation": "leakyrelu" if leaky else "relu"},
        dataset_kwargs={"shape": (1, SIDE, SIDE), "classes": CLASSES, "train": 96, "test": 32},
        rule_options=options))


def copy_ours_into_authors(trainer: Trainer, theirs: AuthorsNet) -> None:
    model = trainer.net.model
    for k, block in enumerate(theirs.blocks):
        linear, bn = [m for m in model.layers[k] if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
        block.encoder.load_state_dict(linear.state_dict())
        block.bn.load_state_dict(bn.state_dict())
        if not theirs.backprop:
            head = trainer.net[k].head
            if hasattr(block, "decoder_y"):
                block.decoder_y.load_state_dict(head.predict[-1].state_dict())
            if hasattr(block, "linear_loss"):
                block.linear_loss.load_state_dict(head.similarity.state_dict())
    theirs.layer_out.load_state_dict(model.layers[-1][-1].state_dict())


# A bias before BN has a gradient of exactly zero in exact arithmetic (BN subtracts the batch mean), so
# its gradient is rounding noise of either side, which Adam divides by its own size: the bias moves by
# up to lr a step on both sides, in directions that differ; BN's running mean follows it (momentum 0.1).
NOISE_DRIVEN = {"bias": 3 * LR, "running_mean": 3 * 0.1 * 3 * LR}


def assert_same_network(trainer: Trainer, theirs: AuthorsNet) -> None:
    model = trainer.net.model
    for k, block in enumerate(theirs.blocks):
        linear, bn = [m for m in model.layers[k] if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
        for mine, their in ((linear, block.encoder), (bn, block.bn)):
            for (name, a), b in zip(mine.state_dict().items(), their.state_dict().values()):
                noise = NOISE_DRIVEN.get(name, 0.0) if mine is linear or name == "running_mean" else 0.0
                torch.testing.assert_close(a, b, rtol=1e-5, atol=max(1e-6, noise), msg=f"block {k} {name}")
    output_layer = model.layers[-1][-1]
    torch.testing.assert_close(output_layer.weight, theirs.layer_out.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output_layer.bias, theirs.layer_out.bias, rtol=1e-5, atol=1e-6)


CELLS = [("bp", None, False, True), ("pred", 0.0, False, False), ("sim", 1.0, True, False),
         ("predsim", 0.99, True, False)]  # their run_experiments.sh: leaky ReLU for sim and predsim


@pytest.mark.parametrize("cell, beta, leaky, backprop", CELLS, ids=[c[0] for c in CELLS])
def test_three_training_steps_equal_the_authors(cell, beta, leaky, backprop):
    trainer = ours("bp" if backprop else "predsim", beta, leaky)
    assert len(trainer.net) == (1 if backprop else LAYERS + 1)  # one module per hidden layer + the output layer
    theirs = AuthorsNet(cell, leaky=leaky, backprop=backprop, beta=0.99 if beta is None else beta)
    if not backprop:  # their output layer starts at zero under local losses; so does ours
        assert torch.count_nonzero(trainer.net.model.layers[-1][-1].weight) == 0
    copy_ours_into_authors(trainer, theirs)
    batches = trainer.data.train_batches(32, 0, "none", torch.Generator())
    for step, (x, y) in enumerate(batches):
        torch.manual_seed(100 + step)  # the same dropout masks, drawn in the same order
        trainer.rule.train_step(trainer.net, x, y, active=list(range(len(trainer.net))))
        torch.manual_seed(100 + step)
        theirs.step(x, y)
    assert step == 2
    assert_same_network(trainer, theirs)


def test_dropout_sits_between_blocks_and_before_the_output_layer():
    """Their block: linear -> BN -> activation -> dropout on what the next block sees, while the
    local losses read the block's output before dropout. Ours puts each dropout at the next layer's
    input; the output layer (dropout -> linear) is the last layer and the classifier the identity."""
    model = ours("predsim", 0.99, True).net.model
    kinds = [[type(m).__name__ for m in layer] for layer in model.layers]
    assert kinds == [["Flatten", "Linear", "BatchNorm1d", "LeakyReLU"],
                     ["Dropout", "Linear", "BatchNorm1d", "LeakyReLU"],
                     ["Dropout", "Linear", "BatchNorm1d", "LeakyReLU"],
                     ["Dropout", "Linear"]]
    assert isinstance(model.classifier, nn.Identity)
    assert all(m.p == DROPOUT for layer in model.layers for m in layer if isinstance(m, nn.Dropout))
    assert all(m.bias is not None for layer in model.layers for m in layer if isinstance(m, nn.Linear))
    assert model.layers[1][3].negative_slope == LEAKY_SLOPE


def test_multistep_decay_is_the_authors_per_epoch_rule():
    """Their lr at 1-based epoch e: lr * 0.25 ** bisect_right(milestones, e - 1), set at the start of
    the epoch; ours per step, milestones in epochs."""
    milestones, steps_per_epoch = [100, 150, 175, 188], 7
    for epoch in range(1, 201):
        theirs = 0.25 ** bisect_right(milestones, epoch - 1)
        for step in ((epoch - 1) * steps_per_epoch, epoch * steps_per_epoch - 1):
            assert lr_factor(step, 200 * steps_per_epoch, 0, "multistep", steps_per_epoch, milestones, 0.25) == theirs


def test_two_pixel_jitter_pads_black_as_torchvision():
    """Their RandomCrop(28, padding=2) pads the image with zeros before Normalize: after
    standardisation the padding is (0 - mean) / std, not zero."""
    from locallearn.data.augment import random_crop

    x = torch.ones(64, 1, 5, 5)
    shifted = random_crop(x, torch.Generator().manual_seed(0), padding=2)
    assert shifted.shape == x.shape and shifted.min() == 0 and shifted.max() == 1
    # every offset in [0, 4] along each axis is drawn
    offsets = {(int(s[0].sum(1).eq(0).sum()), int(s[0].sum(0).eq(0).sum())) for s in shifted}
    assert {o for pair in offsets for o in pair} == {0, 1, 2}
