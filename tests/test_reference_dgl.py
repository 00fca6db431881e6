"""`--head dgl` / `dgl-cnn` against the DGL authors' auxiliary network.

The reference is a port of `auxillary_classifier2` (github.com/eugenium/DGL,
auxiliary_nets_study/models.py; the same class serves imagenet_dgl/ and ddg_comparison/),
re-expressed here: its construction (layer sequence, parameter shapes and count) and its forward
pass, to which our head's parameters are copied. The authors' settings: MLP-SR-aux `n_lin=3,
mlp_layers=3` (CIFAR and ImageNet), MLP-aux `n_lin=0, mlp_layers=3`, CNN-aux `n_lin=2,
mlp_layers=0` with 3x3 convs, and `n_lin=0, mlp_layers=2` for the last layer of their CIFAR net.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from locallearn.errors import UserError
from locallearn.heads import build_head

CIFAR_RESNET_OUTPUTS = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


class AuthorsAuxiliary(nn.Module):
    """DGL's auxiliary classifier for a square map of C channels and side `in_size`.

    Forward: unless it is the CNN variant, average-pool the map to ceil(in_size / 4) per side;
    `n_lin` times conv (C -> C, 1x1, or 3x3 padded for the CNN variant, no bias) -> BN -> ReLU;
    average-pool to 2x2; flatten to 4C. With `mlp_layers` > 0: that many FC(4C -> 4C, bias) ->
    BN1d -> ReLU, then FC(4C -> classes). Without: a BN2d on the pooled 2x2 map (the `self.bn`
    that the authors build in every case but apply only here), then FC(4C -> classes).
    `sequence` is the same description as data: what the forward applies, in order.
    """

    def __init__(self, channels: int, in_size: int, classes: int, n_lin: int, mlp_layers: int, cnn: bool):
        super().__init__()
        self.in_size, self.cnn, self.uses_mlp = in_size, cnn, mlp_layers > 0
        kernel = 3 if cnn else 1
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False),
                          nn.BatchNorm2d(channels)) for _ in range(n_lin))
        self.bn = nn.BatchNorm2d(channels)
        flat = channels * 2 * 2
        hidden = []
        for _ in range(mlp_layers):
            hidden += [nn.Linear(flat, flat), nn.BatchNorm1d(flat), nn.ReLU(True)]
        self.classifier = nn.Sequential(*hidden, nn.Linear(flat, classes))

        shrunk = math.ceil(in_size / 4)
        self.sequence = [] if cnn else [("pool", (shrunk, shrunk))]
        for _ in range(n_lin):
            self.sequence += [("conv", (channels, channels, kernel, kernel), False), ("bn", channels), ("relu",)]
        self.sequence.append(("pool", (2, 2)))
        if not self.uses_mlp:
            self.sequence.append(("bn", channels))
        for _ in range(mlp_layers):
            self.sequence += [("fc", (flat, flat), True), ("bn", flat), ("relu",)]
        self.sequence.append(("fc", (classes, flat), True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cnn:
            x = F.adaptive_avg_pool2d(x, (math.ceil(self.in_size / 4),) * 2)
        for block in self.blocks:
            x = F.relu(block(x))
        x = F.adaptive_avg_pool2d(x, (2, 2))
        if not self.uses_mlp:
            x = self.bn(x)
        return self.classifier(x.view(x.size(0), -1))

    def used_modules(self) -> list[nn.Module]:
        """The modules with parameters in the order the forward pass applies them."""
        used = [m for block in self.blocks for m in block] + ([] if self.uses_mlp else [self.bn])
        return used + [m for m in self.classifier if not isinstance(m, nn.ReLU)]

    def used_parameter_count(self) -> int:
        return sum(p.numel() for m in self.used_modules() for p in m.parameters())


def sequence_of(head: nn.Module) -> list[tuple]:
    """Our head as the same kind of description (flatten steps carry no information and are left out)."""
    out = []
    for m in head.modules():
        if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            size = m.output_size
            out.append(("pool", tuple(size) if isinstance(size, tuple) else (size,) * (2 if isinstance(
                m, nn.AdaptiveAvgPool2d) else 1)))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            out.append(("conv", tuple(m.weight.shape), m.bias is not None))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            out.append(("bn", m.num_features))
        elif isinstance(m, nn.ReLU):
            out.append(("relu",))
        elif isinstance(m, nn.Linear):
            out.append(("fc", tuple(m.weight.shape), m.bias is not None))
    return out


def parametrised_modules(head: nn.Module) -> list[nn.Module]:
    return [m for m in head.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d,
                                                        nn.Linear))]


# (our head, its head kwargs) -> the authors' (n_lin, mlp_layers, cnn)
VARIANTS = [
    pytest.param("dgl", {}, (3, 3, False), id="mlp-sr"),
    pytest.param("dgl", {"convs": 0}, (0, 3, False), id="mlp"),
    pytest.param("dgl-cnn", {}, (2, 0, True), id="cnn"),
    pytest.param("dgl", {"convs": 0, "mlp_depth": 2}, (0, 2, False), id="last-layer"),
    pytest.param("dgl", {"mlp_depth": 0}, (3, 0, False), id="mlp-sr-without-mlp"),
]


@pytest.mark.parametrize("name,kwargs,authors", VARIANTS)
@pytest.mark.parametrize("shape", CIFAR_RESNET_OUTPUTS + [(64, 4, 4)], ids=str)  # 4x4: their 2x2 pooling upsamples
def test_head_has_the_authors_layer_sequence_and_parameter_count(name, kwargs, authors, shape):
    n_lin, mlp_layers, cnn = authors
    reference = AuthorsAuxiliary(shape[0], shape[1], 10, n_lin, mlp_layers, cnn)
    ours = build_head(name, shape, 10, **kwargs)
    assert sequence_of(ours) == reference.sequence
    assert sum(p.numel() for p in ours.parameters()) == reference.used_parameter_count()


def test_mlp_sr_parameter_count_by_hand():
    # (16, 32, 32): 3 convs 16*16 + 3 BN 2*16 + 3 FC (64*64 + 64) + 3 BN1d 2*64 + FC 64*10 + 10
    assert sum(p.numel() for p in build_head("dgl", (16, 32, 32), 10).parameters()) == \
        3 * 256 + 3 * 32 + 3 * (4096 + 64) + 3 * 128 + 650


@pytest.mark.parametrize("name,kwargs,authors", VARIANTS)
@pytest.mark.parametrize("shape", CIFAR_RESNET_OUTPUTS + [(64, 4, 4)], ids=str)
def test_head_computes_the_authors_forward_pass(name, kwargs, authors, shape):
    torch.manual_seed(0)
    n_lin, mlp_layers, cnn = authors
    reference = AuthorsAuxiliary(shape[0], shape[1], 10, n_lin, mlp_layers, cnn)
    ours = build_head(name, shape, 10, **kwargs)
    for theirs, mine in zip(reference.used_modules(), parametrised_modules(ours), strict=True):
        assert type(theirs) is type(mine)
        with torch.no_grad():  # random BN affine parameters, so that no BN is a silent identity
            for p in mine.parameters():
                p.normal_()
        theirs.load_state_dict(mine.state_dict())
    x = torch.randn(6, *shape)
    torch.testing.assert_close(ours.train()(x), reference.train()(x), rtol=1e-5, atol=1e-5)
    # the BN running statistics, updated by the same batch, then drive the evaluation pass
    torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kwargs,authors", VARIANTS)
def test_one_dimensional_features_get_the_same_head_with_one_dimensional_ops(name, kwargs, authors):
    """No 1-d code exists upstream: the 2-d sequence with one spatial axis (so 2 pooled positions
    and hidden FCs of 2C instead of 4C) is the generalisation we claim."""
    n_lin, mlp_layers, cnn = authors
    channels, length = 64, 10
    expected = []
    for step in AuthorsAuxiliary(channels, length, 10, n_lin, mlp_layers, cnn).sequence:
        if step[0] == "pool":
            step = ("pool", step[1][:1])
        elif step[0] == "conv":
            step = ("conv", step[1][:3], step[2])
        elif step[0] == "fc":
            step = ("fc", tuple(d // 2 if d == 4 * channels else d for d in step[1]), step[2])
        elif step[0] == "bn" and step[1] == 4 * channels:
            step = ("bn", 2 * channels)
        expected.append(step)
    assert sequence_of(build_head(name, (channels, length), 10, **kwargs)) == expected


@pytest.mark.parametrize("kwargs", [{"convs": -1}, {"mlp_depth": -2}])
def test_negative_depths_are_user_errors(kwargs):
    with pytest.raises(UserError, match="convs and mlp_depth must be 0 or more"):
        build_head("dgl", (16, 8, 8), 10, **kwargs)
