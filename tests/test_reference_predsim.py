"""`--method predsim` against the authors' code (github.com/anokland/local-loss, train.py):
`LocalLossBlockConv`'s pooling before the prediction head, its two heads and their init, the
`similarity_matrix` and the `predsim` loss, ported here in our own words."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import tiny_config
from locallearn import Trainer
from locallearn.network import LocalModule
from locallearn.rules import RULES
from locallearn.rules.predsim import PredSimHead, pool_kernels, pooled_sizes, similarity_matrix

AUTHORS_DIM_IN_DECODER = 4096  # their --dim-in-decoder default
AUTHORS_BETA = 0.99            # their --beta default


def authors_pooling(channels: int, side: int, target: int):
    """The authors' resolution of the prediction pooling on a square map: double the kernel along
    the height; if still above `target` values, along the width; repeat while above the target and
    the height kernel is below the side. Returns (kernels, pooled sides, padding, flat width); the
    pooling is AvgPool2d(kernels, padding) when a kernel exceeds 1 (stride = kernel, padding
    counted in the mean)."""
    kh = kw = 1
    h = w = side
    flat = channels * h * w
    while flat > target and kh < side:
        kh *= 2
        h = math.ceil(side / kh)
        flat = channels * h * w
        if flat > target:
            kw *= 2
            w = math.ceil(side / kw)
            flat = channels * h * w
    padding = ((kh * (h - side // kh)) // 2, (kw * (w - side // kw)) // 2)
    return (kh, kw), (h, w), padding, flat


def authors_similarity(x: torch.Tensor) -> torch.Tensor:
    """Adjusted cosine similarity: a 4-d map with more than 3 channels and a height above 1 becomes
    the standard deviation of each channel over its positions, anything else is flattened; each row
    is centred, divided by (1e-8 + its L2 norm); the Gram matrix is clamped to [-1, 1]."""
    if x.dim() == 4 and x.size(1) > 3 and x.size(2) > 1:
        x = x.view(x.size(0), x.size(1), -1).std(dim=2)
    else:
        x = x.view(x.size(0), -1)
    centred = x - x.mean(dim=1).unsqueeze(1)
    normed = centred / (1e-8 + torch.sqrt((centred ** 2).sum(dim=1))).unsqueeze(1)
    return normed.matmul(normed.t()).clamp(-1, 1)


class AuthorsHeads(nn.Module):
    """The two auxiliary parts of one authors' conv block, for a C x side x side output h:
    `decoder_y`, FC(flat -> classes) with its weight zeroed, reads the pooled, flattened h;
    `conv_loss`, a 3x3 padded conv C -> C without bias (PyTorch's default init), feeds the
    similarity matrix. Local loss = (1 - beta) CE(decoder_y) + beta MSE(S(conv_loss(h)), S(onehot))."""

    def __init__(self, channels: int, side: int, classes: int, target: int = AUTHORS_DIM_IN_DECODER):
        super().__init__()
        kernels, _, padding, flat = authors_pooling(channels, side, target)
        self.avg_pool = nn.AvgPool2d(kernels, padding=padding) if kernels != (1, 1) else None
        self.decoder_y = nn.Linear(flat, classes)
        self.decoder_y.weight.data.zero_()
        self.conv_loss = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.classes = classes

    def prediction(self, h: torch.Tensor) -> torch.Tensor:
        if self.avg_pool is not None:
            h = self.avg_pool(h)
        return self.decoder_y(h.view(h.size(0), -1))

    def similarity_loss(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = authors_similarity(F.one_hot(y, self.classes).float()).detach()
        return F.mse_loss(authors_similarity(self.conv_loss(h)), target)

    def loss(self, h: torch.Tensor, y: torch.Tensor, beta: float = AUTHORS_BETA) -> torch.Tensor:
        return (1 - beta) * F.cross_entropy(self.prediction(h), y) + beta * self.similarity_loss(h, y)


def copy_into_authors(ours: PredSimHead, theirs: AuthorsHeads) -> None:
    classifier = ours.predict[-1]
    theirs.decoder_y.load_state_dict(classifier.state_dict())
    theirs.conv_loss.load_state_dict(ours.similarity.state_dict())


SHAPES = [(16, 32, 32), (32, 16, 16), (64, 8, 8), (8, 7, 7), (4, 5, 5), (6, 3, 3), (2, 6, 6), (5, 1, 1)]


@pytest.mark.parametrize("target", [4096, 2048, 512, 64, 10, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pooling_is_the_authors_kernel_doubling_with_their_padding(shape, target):
    kernels, sides, padding, flat = authors_pooling(shape[0], shape[1], target)
    assert pool_kernels(shape, target) == kernels
    assert pooled_sizes(shape, target) == sides
    pool = PredSimHead(shape, 10, target).predict[0]
    if kernels == (1, 1):
        assert isinstance(pool, nn.Identity)
    else:
        assert (pool.kernel_size, pool.stride, pool.padding, pool.count_include_pad, pool.ceil_mode) == \
            (kernels, kernels, padding, True, False)
    assert PredSimHead(shape, 10, target).predict[-1].in_features == flat


@pytest.mark.parametrize("target", [4096, 512, 64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_heads_compute_the_authors_prediction_and_similarity_loss(shape, target):
    torch.manual_seed(0)
    ours, theirs = PredSimHead(shape, 10, target), AuthorsHeads(shape[0], shape[1], 10, target)
    with torch.no_grad():  # a nonzero prediction weight, so that the pooled values matter
        ours.predict[-1].weight.normal_()
    copy_into_authors(ours, theirs)
    h = torch.relu(torch.randn(12, *shape))
    y = torch.randint(0, 10, (12,))
    torch.testing.assert_close(ours(h), theirs.prediction(h), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.similarity_loss(h, y), theirs.similarity_loss(h, y), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(6, 4, 4), (3, 4, 4), (6, 1, 4), (7,)], ids=str)
def test_similarity_matrix_is_the_authors(shape):
    torch.manual_seed(1)
    x = torch.randn(9, *shape)
    torch.testing.assert_close(similarity_matrix(x), authors_similarity(x), rtol=1e-6, atol=1e-6)


def test_heads_start_as_the_authors_prediction_weight_zero_and_default_similarity_init():
    torch.manual_seed(2)
    head = PredSimHead((32, 16, 16), 10)
    assert torch.count_nonzero(head.predict[-1].weight) == 0
    bias_bound = 1 / math.sqrt(head.predict[-1].in_features)  # PyTorch's default bias init
    assert 0 < head.predict[-1].bias.abs().max() <= bias_bound
    # PyTorch's default conv init is uniform in +-1/sqrt(fan_in); 9216 draws reach near the bound
    weight, bound = head.similarity.weight, 1 / math.sqrt(32 * 9)
    assert head.similarity.bias is None
    assert 0.99 * bound < weight.abs().max() <= bound


def test_defaults_are_the_authors():
    rule = RULES.get("predsim")()
    assert (rule.predsim_beta, rule.predsim_features) == (AUTHORS_BETA, AUTHORS_DIM_IN_DECODER)


@pytest.mark.parametrize("scale_last", [False, True])
def test_module_losses_are_the_authors_combination(scale_last):
    """A whole predsim step on a CIFAR-shaped ResNet-20 (16/32/64 channels on 32x32 maps): every
    module but the last gets the authors' local loss (computed by the port from our weights);
    the last gets the cross-entropy, times 1 - beta with --predsim-scale-last as their output layer."""
    trainer = Trainer(tiny_config(method="predsim", modules=3, lr=1e-30, momentum=0.0, weight_decay=0.0,
                                  max_steps=1, model_kwargs={}, batch_size=16,
                                  rule_options={"predsim_scale_last": scale_last},
                                  dataset_kwargs={"shape": (3, 32, 32), "classes": 10, "train": 32, "test": 16}))
    x, y = next(trainer.data.train_batches(16, 0, "none", torch.Generator()))
    stats = trainer.rule.train_step(trainer.net, x, y, active=[0, 1, 2])
    h = x
    with torch.no_grad():
        for module in trainer.net:
            out = module(h)
            if module.is_last:
                expected = F.cross_entropy(module.head(out), y) * ((1 - AUTHORS_BETA) if scale_last else 1)
            else:
                theirs = AuthorsHeads(out.shape[1], out.shape[2], 10)
                copy_into_authors(module.head, theirs)
                expected = theirs.loss(out, y)
            torch.testing.assert_close(stats[f"loss/{module.index}"], expected, rtol=1e-5, atol=1e-6)
            h = out


def test_loss_uses_beta_as_the_authors():
    torch.manual_seed(3)
    shape, beta = (8, 6, 6), 0.7
    rule = RULES.get("predsim")(predsim_beta=beta)
    head = PredSimHead(shape, 5)
    with torch.no_grad():
        head.predict[-1].weight.normal_()
    theirs = AuthorsHeads(8, 6, 5)
    copy_into_authors(head, theirs)
    module = LocalModule(0, range(0, 1), nn.Sequential(), head, False, shape, shape)
    h, y = torch.randn(10, *shape), torch.randint(0, 5, (10,))
    loss = rule.local_loss(module, h, h, y, {}, {})
    torch.testing.assert_close(loss, theirs.loss(h, y, beta), rtol=1e-5, atol=1e-6)
