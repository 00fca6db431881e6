"""`--method infopro` against the authors' code (github.com/blackfeather-wang/InfoPro-Pytorch,
"Experiments on CIFAR-SVHN-STL10/": networks/auxiliary_nets.py, configs.py, resnet.py and
comand.sh): the "1c2f" classifier, the decoder, the target image, the weight schedule over the
modules, the positions of the local modules and the init, ported here in our own words.

The authors' classifier loss has two modes, `contrast` (their default) and `cross_entropy`;
`--method infopro` is the `cross_entropy` one, which AugLocal compares with."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from locallearn.models import create_model
from locallearn.network import LocalModule
from locallearn.rules import RULES
from locallearn.rules.infopro import ReconstructionDecoder, infopro_classifier
from locallearn.split import split_layers

CIFAR_MEAN = torch.tensor([125.3, 123.0, 113.9]).view(1, 3, 1, 1) / 255
CIFAR_STD = torch.tensor([63.0, 62.1, 66.7]).view(1, 3, 1, 1) / 255
WIDE_LIST = (16, 16, 32, 64)  # channels of the stem and of stages 1-3 of their CIFAR ResNets


def authors_classifier(inplanes: int, classes: int, hidden: int = 128) -> nn.Sequential:
    """Their "1c2f" head: a 3x3 conv without bias to 32 (from 16, stride 2), 64 (from 32, stride 2)
    or 64 (from 64, stride 1) channels -> BN -> ReLU -> global average pool -> FC(128) -> ReLU -> FC."""
    width, stride = {16: (32, 2), 32: (64, 2), 64: (64, 1)}[inplanes]
    return nn.Sequential(nn.Conv2d(inplanes, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(width, hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, classes))


class AuthorsDecoder(nn.Module):
    """Their decoder: bilinear upsampling (align_corners) of the features to the image side, 3x3
    conv (12 channels, bias) -> BN -> ReLU -> 3x3 conv (3 channels, bias) -> sigmoid; the loss is
    the mean binary cross-entropy against the image in [0, 1]."""

    def __init__(self, inplanes: int, image_size: int):
        super().__init__()
        self.image_size = image_size
        self.decoder = nn.Sequential(nn.Conv2d(inplanes, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                                     nn.Conv2d(12, 3, 3, padding=1), nn.Sigmoid())

    def forward(self, features: torch.Tensor, image01: torch.Tensor) -> torch.Tensor:
        features = F.interpolate(features, size=[self.image_size] * 2, mode="bilinear", align_corners=True)
        return nn.BCELoss()(self.decoder(features), image01)


def authors_restore(normalised: torch.Tensor) -> torch.Tensor:
    """Their target image: the CIFAR normalisation undone."""
    return normalised * CIFAR_STD + CIFAR_MEAN


def authors_weights(ixx_1, ixy_1, ixx_2, ixy_2, k: int, n_modules: int) -> tuple[float, float]:
    """lambda_1 (reconstruction) and lambda_2 (classifier) of local module k: linear from (ixx_1,
    ixy_1) at module 0 to (ixx_2, ixy_2) at module K-2; with K <= 2 the first values."""
    ratio = k / (n_modules - 2) if n_modules > 2 else 0
    return ixx_1 * (1 - ratio) + ixx_2 * ratio, ixy_1 * (1 - ratio) + ixy_2 * ratio


# configs.py: (stage, block) after which each local module ends; stage 0 is the stem
AUTHORS_LAYOUTS = {
    ("resnet32", 2): [(2, 1)],
    ("resnet32", 3): [(1, 4), (2, 4)],
    ("resnet32", 4): [(1, 2), (2, 1), (3, 0)],
    ("resnet32", 8): [(1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2)],
    ("resnet32", 16): [(0, 0)] + [(1, b) for b in range(5)] + [(2, b) for b in range(5)] + [(3, b) for b in range(4)],
    ("resnet110", 16): [(1, 1), (1, 4), (1, 7), (1, 10), (1, 13), (1, 16), (2, 1), (2, 4), (2, 7), (2, 11),
                        (2, 15), (3, 1), (3, 5), (3, 9), (3, 13)],
}
BLOCKS_PER_STAGE = {"resnet32": 5, "resnet110": 18}
# the --split that docs/methods/infopro_predsim.md gives for each; else the boundaries: module ends + 1
DOCUMENTED_SPLITS = {("resnet32", 16): "layer", ("resnet32", 3): "stage", ("resnet32", 2): "8",
                     ("resnet32", 4): "4,8,12", ("resnet32", 8): "2,4,6,8,10,12,14",
                     ("resnet110", 16): "3,6,9,12,15,18,21,24,27,31,35,39,43,47,51"}


def layer_index(model: str, stage: int, block: int) -> int:
    """Our layer list is the stem followed by the residual blocks."""
    return 0 if stage == 0 else 1 + BLOCKS_PER_STAGE[model] * (stage - 1) + block


def image_batch(n: int = 8, side: int = 32) -> torch.Tensor:
    """A normalised batch of 8-bit images in which every channel reaches 0 and 255, as CIFAR
    batches do: there our target (the batch's range mapped to [0, 1]) is the authors' exactly."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 3, side, side), generator=generator)
    pixels[0, :, 0, 0], pixels[1, :, 0, 0] = 0, 255
    return (pixels.float() / 255 - CIFAR_MEAN) / CIFAR_STD


def copy_parameters(ours: nn.Module, theirs: nn.Module) -> None:
    """Random values into ours, then into theirs layer by layer: same types and shapes in the same
    order, i.e. the same architecture."""
    def layers(net):
        return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.3)
    for mine, other in zip(layers(ours), layers(theirs), strict=True):
        assert type(mine) is type(other)
        other.load_state_dict(mine.state_dict())


@pytest.mark.parametrize("model_name,k", sorted(AUTHORS_LAYOUTS), ids=str)
def test_module_layout_heads_and_losses_are_the_authors(model_name, k):
    """The authors' module ends are reached by the documented `--split`; at each, our classifier
    and decoder equal theirs for that stage's width, parameters copied, and the module's local loss
    is lambda_1 BCE + lambda_2 CE with their weights."""
    torch.manual_seed(0)
    model = create_model(model_name, (3, 32, 32), 10)
    ends = [layer_index(model_name, *position) for position in AUTHORS_LAYOUTS[(model_name, k)]]
    ranges = split_layers(len(model.layers), model.stages, DOCUMENTED_SPLITS[(model_name, k)])
    assert [r.stop - 1 for r in ranges[:-1]] == ends and len(ranges) == k

    rule = RULES.get("infopro")()
    rule.n_modules = k
    image = image_batch()
    y = torch.randint(0, 10, (8,))
    for index, (layers, (stage, _)) in enumerate(zip(ranges, AUTHORS_LAYOUTS[(model_name, k)])):
        if index % 4 and index != k - 2:  # every 4th module and the last local one keep the test fast
            continue
        head = rule.build_head(model, index, layers, "linear", {})
        classifier, decoder = authors_classifier(WIDE_LIST[stage], 10), AuthorsDecoder(WIDE_LIST[stage], 32)
        copy_parameters(head.classifier, classifier)
        copy_parameters(head.decoder.net, decoder.decoder)
        shape = model.layer_shapes[layers.stop - 1]
        assert shape[0] == WIDE_LIST[stage]
        features = torch.relu(torch.randn(8, *shape))
        module = LocalModule(index, layers, nn.Sequential(), head, False, shape, shape)
        stats = {}
        loss = rule.local_loss(module, features, features, y, {"image": image}, stats)
        reconstruction = decoder(features, authors_restore(image))
        cross_entropy = F.cross_entropy(classifier(features), y)
        torch.testing.assert_close(stats[f"recon/{index}"], reconstruction.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats[f"ce/{index}"], cross_entropy.detach(), rtol=1e-5, atol=1e-6)
        recon_weight, ce_weight = authors_weights(5, 0.05, 0.2, 0.5, index, k)
        torch.testing.assert_close(loss, recon_weight * reconstruction + ce_weight * cross_entropy,
                                   rtol=1e-5, atol=1e-6)


def test_default_weights_are_the_authors_resnet32_k16_cifar10_setting():
    rule = RULES.get("infopro")()
    # comand.sh, ResNet-32, K = 16: --ixx_1 5 --ixy_1 0.05 --ixx_2 0.2 --ixy_2 0.5 (and AugLocal's run.sh)
    assert (rule.recon_weight_first, rule.ce_weight_first, rule.recon_weight_last, rule.ce_weight_last) == \
        (5, 0.05, 0.2, 0.5)
    assert rule.infopro_hidden == 128  # their --aux_net_feature_dim 128, with aux_net_widen 1


@pytest.mark.parametrize("n_modules", [2, 3, 4, 8, 16, 55])
def test_weight_schedule_is_the_authors_at_every_module(n_modules):
    weights = dict(recon_weight_first=5.0, ce_weight_first=0.0, recon_weight_last=0.5, ce_weight_last=1.0)
    rule = RULES.get("infopro")(**weights)
    rule.n_modules = n_modules
    for k in range(n_modules - 1):
        assert rule.loss_weights(k) == pytest.approx(authors_weights(5.0, 0.0, 0.5, 1.0, k, n_modules))


def layer_sequence(net: nn.Module) -> list[tuple]:
    """(type, weight shape, stride, has a bias) of every leaf module in order."""
    return [(type(m).__name__, tuple(getattr(m, "weight", torch.empty(0)).shape), getattr(m, "stride", None),
             getattr(m, "bias", None) is not None) for m in net.modules() if not list(m.children())]


def test_classifier_of_every_cifar_width_is_the_authors():
    model = create_model("resnet110", (3, 32, 32), 10)
    for j in (0, 18, 19, 36, 37, 53):  # the stem, the last layer of stage 1, first and last of 2, of 3
        ours, theirs = infopro_classifier(model, j), authors_classifier(model.layer_shapes[j][0], 10)
        assert layer_sequence(ours) == layer_sequence(theirs)


def test_decoder_init_is_the_authors():
    """Their init loop: every conv weight ~ N(0, 2 / (k * k * out_channels)); the decoder's conv
    biases keep PyTorch's default, uniform in +-1/sqrt(fan_in); BN weight 1, bias 0."""
    torch.manual_seed(0)
    first, bn, _, second = ReconstructionDecoder((64, 8, 8), (3, 32, 32)).net
    for conv in (first, second):
        std = math.sqrt(2 / (9 * conv.out_channels))
        assert abs(float(conv.weight.detach().std()) / std - 1) < (0.05 if conv is first else 0.2)
        bound = 1 / math.sqrt(conv.in_channels * 9)
        assert 0.5 * bound < float(conv.bias.detach().abs().max()) <= bound
    assert torch.equal(bn.weight, torch.ones(12)) and torch.equal(bn.bias, torch.zeros(12))
