"""Every registry model: ordered layers + classifier, any input shape, every split trains one step."""
import pytest
import torch
import torch.nn as nn

from helpers import SEED_MODEL_KWARGS
from locallearn.errors import UserError
from locallearn.heads import HEADS, build_head
from locallearn.models import MODELS, create_model
from locallearn.models.vgg import convs_per_stage
from locallearn.network import ModularNet
from locallearn.split import split_layers

EXPECTED_LAYERS = {"resnet20": 10, "resnet32": 16, "resnet56": 28, "resnet110": 55, "plainnet32": 16,
                   "resnet18": 9, "resnet34": 17, "resnet50": 17, "resnet101": 34, "vgg11": 8, "vgg16": 13,
                   "vgg19": 16, "alexnet": 7, "cnn1d": 8, "resnet1d": 10, "mlp": 4}
SMALL = {"width": 4}  # channel width for the tests; the architecture (layers, strides) is unchanged
SMALL_KWARGS = {name: SMALL for name in MODELS.names() if name.startswith(("resnet", "plainnet"))}
SMALL_KWARGS.update({name: {"width": 0.0625} for name in MODELS.names() if name.startswith(("vgg", "alexnet"))})
SMALL_KWARGS["alexnet"] = {"width": 0.0625, "fc_width": 16}
SMALL_KWARGS["resnet1d"] = SMALL
SMALL_KWARGS["cnn1d"] = {"widths": (4, 4, 8, 8, 8, 8, 8, 8)}
SMALL_KWARGS["mlp"] = {"width": 16}
SMALL_KWARGS.update(SEED_MODEL_KWARGS)


@pytest.mark.parametrize("name,layers", sorted(EXPECTED_LAYERS.items()))
def test_layer_counts(name, layers):
    assert len(create_model(name, (3, 32, 32), 10, **SMALL_KWARGS.get(name, {})).layers) == layers


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", [(1, 40), (3, 32, 32), (1, 8, 8), (1, 1, 40)])
def test_every_model_takes_every_input_shape(name, shape):
    model = create_model(name, shape, 7, **SMALL_KWARGS.get(name, {}))
    assert model(torch.randn(2, *shape)).shape == (2, 7)
    assert len(model.layer_shapes) == len(model.layers) == len(model.stages)


def test_mlp_flattens_and_conv_models_use_1d_convs_on_1d_data():
    mlp = create_model("mlp", (2, 5, 4), 3, width=8)
    assert mlp.layers[0][1].in_features == 40
    resnet = create_model("resnet20", (1, 40), 10, width=4)
    assert any(isinstance(m, nn.Conv1d) for m in resnet.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in resnet.modules())


def test_vgg_of_any_depth_has_that_many_weight_layers():
    for depth in (12, 17, 27, 57):
        assert sum(convs_per_stage(depth)) + 1 == depth
        model = create_model(f"vgg{depth}", (3, 8, 8), 10, width=0.0625)
        weights = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert len(weights) == depth
    assert convs_per_stage(16) == (2, 2, 3, 3, 3)  # configuration D of the VGG paper


def test_plainnet_has_no_shortcuts_and_resnet_does():
    x = torch.randn(2, 16, 8, 8)
    for plain in (True, False):
        block = create_model("plainnet20" if plain else "resnet20", (3, 8, 8), 10, width=16).layers[1].eval()
        for p in block.parameters():
            nn.init.zeros_(p)  # the residual branch now outputs zero
        out = block(x)
        assert torch.equal(out, torch.zeros_like(out) if plain else torch.relu(x))


def test_imagenet_resnet_stem_follows_input_size():
    big = create_model("resnet18", (3, 224, 224), 10, width=4)
    small = create_model("resnet18", (3, 32, 32), 10, width=4)
    assert big.layer_shapes[0][1:] == (56, 56)  # 7x7/2 conv + 3x3/2 max-pool, as torchvision
    assert small.layer_shapes[0][1:] == (32, 32)


def test_unknown_model_and_bad_kwargs_are_user_errors():
    with pytest.raises(UserError, match="unknown model 'resnet33'; choose one of: .*resnet32"):
        create_model("resnet33", (3, 8, 8), 10)
    with pytest.raises(UserError, match="model 'mlp' has no argument 'depthh'; its --model-kwargs are: depth, width"):
        create_model("mlp", (3, 8, 8), 10, depthh=3)
    with pytest.raises(UserError, match="cannot build model 'resnet20' for input shape .*negative dimension"):
        create_model("resnet20", (3, 8, 8), 10, width=-4)


def _trains_one_step(model, ranges):
    net = ModularNet(model, ranges, lambda k, layers: build_head("linear", model.layer_shapes[layers.stop - 1],
                                                                 model.num_classes))
    x, y = torch.randn(4, *model.input_shape), torch.arange(4) % model.num_classes
    before = [p.detach().clone() for p in model.parameters()]
    h = x
    for module in net:  # the local-learning step of the engine, spelled out
        out = module(h.detach())
        loss = nn.functional.cross_entropy(module.head(out), y)
        loss.backward()
        h = out
    assert torch.isfinite(loss)
    for module in net:
        with torch.no_grad():
            for p in module.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_splits_at_every_k_and_trains_one_step(name):
    model = create_model(name, (3, 8, 8), 4, **SMALL_KWARGS.get(name, {}))
    n = len(model.layers)
    for k in range(1, n + 1):
        ranges = split_layers(n, model.stages, "even", k, name)
        assert len(ranges) == k and [i for r in ranges for i in r] == list(range(n))
        sizes = [len(r) for r in ranges]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        _trains_one_step(model, ranges)
    with pytest.raises(UserError, match=f"larger than the number of layers of {name} \\({n}\\)"):
        split_layers(n, model.stages, "even", n + 1, name)


@pytest.mark.parametrize("head", HEADS.names())
@pytest.mark.parametrize("shape", [(8,), (8, 40), (8, 6, 6), (8, 1, 1)])
def test_every_head_fits_every_feature_shape(head, shape):
    out = build_head(head, shape, 5).train()(torch.randn(3, *shape))
    assert out.shape == (3, 5)


def test_plain_resnet18_is_the_forward_gradient_papers_layerwise_model():
    """Section 4.1: ResNet-18 without skip connections, 16 blocks, the first of two layers."""
    from locallearn.split import split_layers

    plain = create_model("resnet18", (3, 32, 32), 10, stem="cifar", plain=True)
    residual = create_model("resnet18", (3, 32, 32), 10, stem="cifar")
    assert len(plain.layers) == 17 and all(len(layer) == 3 for layer in plain.layers)  # conv, BN, ReLU each
    shortcuts = sum(p.numel() for layer in residual.layers[1:] if getattr(layer, "downsample", None) is not None
                    for p in layer.downsample.parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(plain) == count(residual) - shortcuts  # the same convolutions, no 1x1 projections
    assert [len(r) for r in split_layers(17, plain.stages, "even", 16)] == [2] + [1] * 15
    with pytest.raises(UserError, match="plain=True splits BasicBlocks into their convolutions"):
        create_model("resnet50", (3, 32, 32), 10, plain=True)
