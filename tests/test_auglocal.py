"""AugLocal: layer selection (section 3.2), copies of later layers, pyramidal depth (eq. 3), the
Table 5 ablations, the local loss and the Table 13 combination with InfoPro. The comparison with
the authors' code (layout, depths, classifier, Table 7) is in test_auglocal_reference.py.

auxnets counts copied layers (c); the rule's --aux-depth is the paper's d = c + 1."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import SEED_MODEL_KWARGS, tiny_config
from locallearn import Trainer
from locallearn import auxnets
from locallearn.errors import UserError
from locallearn.models import MODELS, create_model
from locallearn.models.resnet_cifar import BasicBlock
from locallearn.rules import RULES

pytestmark = pytest.mark.usefixtures("keep_gradients")  # these tests read .grad after a step


# ------------------------------------------------------------------------------------- selection
def test_uniform_indices_of_the_paper_examples():
    assert auxnets.uniform_indices(0, 16, 2) == [8, 15]        # ResNet-32, j=0, d=2 (7.5 -> 8)
    assert auxnets.uniform_indices(0, 16, 1) == [15]           # the last index is always L-1
    assert auxnets.uniform_indices(2, 16, 2) == [8, 15]        # 2 + 13/2 = 8.5 -> 8 (Python's round)
    assert auxnets.uniform_indices(0, 16, 3) == [5, 10, 15]
    assert auxnets.uniform_indices(12, 16, 5) == [13, 14, 15]  # d >= L-1-j: all later layers
    assert auxnets.uniform_indices(0, 55, 2) == [27, 54]       # ResNet-110


@pytest.mark.parametrize("n_layers", [16, 55])  # ResNet-32, ResNet-110
def test_uniform_indices_equal_the_formula_for_every_layer_and_depth(n_layers):
    for depth in range(1, 7):
        for j in range(n_layers - 1):
            later = n_layers - 1 - j
            expected = (list(range(j + 1, n_layers)) if depth >= later else
                        [round(j + (n_layers - j - 1) * i / depth) for i in range(1, depth + 1)])
            got = auxnets.uniform_indices(j, n_layers, depth)
            assert got == expected, (j, depth)
            assert got[-1] == n_layers - 1 and all(a < b for a, b in zip(got, got[1:]))
            assert len(got) == min(depth, later)


def test_ablation_selections():
    assert auxnets.selected_indices("sequential", 3, 16, 4) == [4, 5, 6, 7]
    assert auxnets.selected_indices("sequential", 13, 16, 4) == [14, 15]
    assert auxnets.selected_indices("repetitive", 3, 16, 4) == [4, 4, 4, 4]
    assert auxnets.selected_indices("c33", 0, 16, 2) == [8, 15]
    with pytest.raises(UserError, match="aux-selection"):
        auxnets.selected_indices("random", 0, 16, 2)


# --------------------------------------------------------------------------------- pyramidal depth
@pytest.mark.parametrize("copies,decay,min_copies,n_modules", [(5, 0.5, 1, 11), (8, 1.0, 1, 47), (6, 0.6, 2, 49),
                                                               (3, 0.8, 1, 7), (2, 0.5, 1, 14), (4, 0.0, 1, 12)])
def test_pyramidal_depths_fall_monotonically_from_c_to_the_last_module(copies, decay, min_copies, n_modules):
    # the exact depth of every module is compared with the authors' formula in test_auglocal_reference.py
    depths = [auxnets.pyramid_depth(copies, k, n_modules, decay, min_copies) for k in range(n_modules - 1)]
    assert depths[0] == copies
    assert all(a >= b for a, b in zip(depths, depths[1:]))
    assert min(depths) >= min_copies
    assert depths[-1] == max(min_copies, round(copies * (1 - decay) + decay * min_copies))
    if decay == 0.0:
        assert set(depths) == {copies}


def test_pyramidal_depth_examples():
    # ResNet-110 with 8 copies (the paper's d = 9), tau = 1: K = 47 modules, 8 copies at the first,
    # 1 at the last one with an auxiliary net (k = 45)
    assert auxnets.pyramid_depth(8, 0, 47, 1.0) == 8 and auxnets.pyramid_depth(8, 45, 47, 1.0) == 1
    assert auxnets.pyramid_depth(9, 53, 55, 0.5) == 5     # 9 * 0.5 + 0.5 = 5
    assert auxnets.pyramid_depth(4, 14, 16, 0.0) == 4     # tau = 0: no pyramid
    assert auxnets.pyramid_depth(4, 0, 2, 1.0) == 4       # one auxiliary net: no slope to follow


# ------------------------------------------------------------------------------ the copied layers
def _authors_strides(channels_j, channels_of_selected):
    """Stride of each copy in the authors' code: log2 of the channel ratio is added to a pending
    count of down-samplings; a copy takes one (stride 2) while any is pending."""
    pending, strides, previous = 0, [], channels_j
    for c in channels_of_selected:
        pending += int(math.log2(c // previous))
        strides.append(2 if pending >= 1 else 1)
        pending -= 1 if pending >= 1 else 0
        previous = c
    return strides


@pytest.mark.parametrize("name", ["resnet32", "resnet110"])
def test_resnet_aux_nets_copy_the_selected_blocks_with_the_authors_strides(name):
    model = create_model(name, (3, 16, 16), 10, width=4)
    n_layers = len(model.layers)
    for depth in (1, 2, 3, 6):
        for j in (0, 1, 5, n_layers // 2, n_layers - 3, n_layers - 2):
            indices = auxnets.uniform_indices(j, n_layers, depth)
            aux = auxnets.build_aux_net(model, j, depth)
            copies, classifier = list(aux)[:-1], aux[-1]
            assert len(copies) == len(indices)
            channels = [model.layer_shapes[i][0] for i in indices]
            expected_strides = _authors_strides(model.layer_shapes[j][0], channels)
            cin = model.layer_shapes[j][0]
            for block, cout, stride in zip(copies, channels, expected_strides):
                assert isinstance(block, BasicBlock)
                assert (block.conv1.in_channels, block.conv1.out_channels) == (cin, cout)
                assert block.conv1.stride == (stride, stride)
                needs_projection = stride != 1 or cin != cout
                assert (block.downsample is not None) == needs_projection
                cin = cout
            # the head is the primary classifier's kind: global average pooling + linear, with the
            # authors' BatchNorm1d in front of the linear when one layer is copied
            if depth == 1:
                norm, linear = classifier[-1]
                assert isinstance(norm, nn.BatchNorm1d) and norm.num_features == cin
            else:
                linear = classifier[-1]
            assert isinstance(linear, nn.Linear) and linear.in_features == cin
            h = torch.randn(2, *model.layer_shapes[j])
            assert aux(h).shape == (2, 10)


def test_copies_share_no_weights_and_are_reinitialised():
    torch.manual_seed(0)
    model = create_model("resnet32", (3, 16, 16), 10, width=4)
    with torch.no_grad():  # make the primary's weights recognisable
        for p in model.parameters():
            p.fill_(0.123)
    aux = auxnets.build_aux_net(model, 3, 3)
    primary = {p.data_ptr() for p in model.parameters()}
    for p in aux.parameters():
        assert p.data_ptr() not in primary
        assert not torch.all(p == 0.123)
    # same-shaped copy of an unchanged block (layer 15 copied for j=14) has fresh weights
    copy15 = auxnets.build_aux_net(model, 14, 1)[0]
    assert copy15.conv1.weight.shape == model.layers[15].conv1.weight.shape
    assert not torch.equal(copy15.conv1.weight, model.layers[15].conv1.weight)


SMALL = {  # narrow versions of the registry's models, so that building every aux net stays fast
    "resnet18": {"width": 4}, "resnet34": {"width": 4}, "resnet50": {"width": 2}, "resnet101": {"width": 2},
    "vgg11": {"width": 0.05}, "vgg13": {"width": 0.05}, "vgg16": {"width": 0.05}, "vgg19": {"width": 0.05},
    "alexnet": {"width": 0.1, "fc_width": 16}, "mlp": {"width": 16},
    "cnn1d": {"widths": (4, 4, 8, 8, 16, 16, 16, 16)},
    **SEED_MODEL_KWARGS,
}


@pytest.mark.parametrize("name", MODELS.names())
def test_aux_nets_fit_every_model_of_the_registry(name):
    kwargs = SMALL.get(name, {"width": 2} if name.startswith(("resnet", "plainnet")) else {})
    for input_shape in ((3, 16, 16), (1, 40)) if name in ("mlp", "cnn1d", "resnet1d", "resnet20") else ((3, 16, 16),):
        model = create_model(name, input_shape, 7, **kwargs)
        n_layers = len(model.layers)
        for j in sorted({0, n_layers // 2, n_layers - 2}):
            for depth, selection in ((1, "uniform"), (3, "uniform"), (2, "sequential"), (2, "repetitive")):
                aux = auxnets.build_aux_net(model, j, depth, selection)
                aux.train()
                assert aux(torch.randn(2, *model.layer_shapes[j])).shape == (2, 7), (j, depth, selection)
                # every copy gives the channels (or features) of the layer it copies
                shape = model.layer_shapes[j]
                for part, index in zip(list(aux)[:-1], auxnets.selected_indices(selection, j, n_layers, depth)):
                    shape = auxnets.output_shape(part, shape)
                    assert shape[0] == model.layer_shapes[index][0]
                # uniform copies never fall below the primary network's resolution at the last layer
                target = model.layer_shapes[-1]
                if selection == "uniform" and len(shape) == len(target) > 1:
                    assert all(s >= t for s, t in zip(shape[1:], target[1:]))


@pytest.mark.parametrize("name", ["resnet32", "vgg11"])
def test_repetitive_copies_keep_the_resolution_of_the_layer_they_repeat(name):
    """Table 5's repetitive net repeats layer j+1: when that layer down-samples, only the first copy
    does (the authors' pending-pool rule: one halving per doubling of the channels), so that the
    auxiliary net stays at the resolution the primary network has after layer j+1."""
    model = create_model(name, (3, 16, 16), 10, **({"width": 4} if name == "resnet32" else {"width": 0.05}))
    n_layers = len(model.layers)
    strided = [j for j in range(n_layers - 1) if model.layer_shapes[j + 1][1:] != model.layer_shapes[j][1:]]
    assert strided  # the check below covers layers that down-sample and layers that do not
    for j in range(n_layers - 1):
        for n_copies in (1, 2, 4):
            aux = auxnets.build_aux_net(model, j, n_copies, "repetitive")
            shape = model.layer_shapes[j]
            for part in list(aux)[:-1]:
                shape = auxnets.output_shape(part, shape)
                assert shape == model.layer_shapes[j + 1], (j, n_copies)
            if name == "resnet32":
                strides = [block.conv1.stride[0] for block in list(aux)[:-1]]
                channels = [model.layer_shapes[j + 1][0]] * n_copies
                assert strides == _authors_strides(model.layer_shapes[j][0], channels), (j, n_copies)


@pytest.mark.parametrize("selection,kernel", [("c11", 1), ("c33", 3)])
def test_conv_stack_ablations_match_the_uniform_flops(selection, kernel):
    model = create_model("resnet32", (3, 16, 16), 10, width=8)
    for j, depth in ((0, 2), (4, 3), (9, 1)):
        uniform = auxnets.build_aux_net(model, j, depth, "uniform")
        stack = auxnets.build_aux_net(model, j, depth, selection)
        convs = [m for m in stack.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == len(list(uniform)) - 1
        assert all(c.kernel_size == (kernel, kernel) for c in convs)
        assert len({c.out_channels for c in convs}) == 1
        shape = model.layer_shapes[j]
        uniform_flops = auxnets.forward_flops(uniform, shape)
        stack_flops = auxnets.forward_flops(stack, shape)
        assert abs(stack_flops - uniform_flops) <= 0.1 * uniform_flops, (j, stack_flops, uniform_flops)
        assert stack(torch.randn(2, *shape)).shape == (2, 10)


# ---------------------------------------------------------------------------------- the rule
def _auglocal(**options):
    return Trainer(tiny_config(method="auglocal", split="layer", modules=None, lr=1e-30, momentum=0.0,
                               weight_decay=0.0, max_steps=1, rule_options=options))


def test_each_module_gets_the_aux_net_of_its_last_layer_and_the_pyramid_depth():
    trainer = _auglocal(aux_depth=4, pyramid_decay=1.0)  # the paper's d = 4: three copied layers
    model, n_layers, n_modules = trainer.net.model, len(trainer.net.model.layers), len(trainer.net)
    assert n_modules == n_layers - 3  # the authors' layout: the last 4 layers train with the classifier
    seen = set()
    for module in trainer.net.local_modules[:-1]:
        j = module.layer_range.stop - 1
        copies = auxnets.pyramid_depth(3, module.index, n_modules, 1.0)
        seen.add(copies)
        assert len(list(module.head)[:-1]) == len(auxnets.uniform_indices(j, n_layers, copies)) == copies
    assert seen == {1, 2, 3}
    assert trainer.net[-1].head is model.classifier and len(trainer.net[-1].layer_range) == 4
    # the former layout: every layer but the last has its own auxiliary net
    assert len(_auglocal(aux_depth=4, aux_layout="layer").net) == n_layers
    # with an even split the module's last layer decides (layers 0-4 -> j = 4)
    even = Trainer(tiny_config(method="auglocal", modules=2, rule_options={"aux_depth": 3}))
    indices = auxnets.uniform_indices(4, 10, 2)
    assert [b.conv1.out_channels for b in list(even.net[0].head)[:-1]] == \
        [model.layer_shapes[i][0] for i in indices]


def test_local_gradient_is_the_cross_entropy_of_the_aux_net_only():
    trainer = _auglocal(aux_depth=3)
    x, y = next(trainer.data.train_batches(32, 0, "none", torch.Generator()))
    inputs = []
    rule = trainer.rule
    original = rule.module_step
    rule.module_step = lambda module, h, y_, message, stats: inputs.append(h) or original(module, h, y_, message, stats)
    stats = rule.train_step(trainer.net, x, y, active=list(range(len(trainer.net))))
    for module, h in zip(trainer.net, inputs):
        assert not h.requires_grad
        loss = F.cross_entropy(module.head(module(h)), y)
        assert torch.allclose(stats[f"loss/{module.index}"], loss.detach(), rtol=1e-5)
        params = module.trainable_parameters()
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def test_recon_weight_adds_infopros_reconstruction_of_the_image():
    trainer = _auglocal(aux_depth=2, recon_weight=0.7)
    x, y = next(trainer.data.train_batches(32, 0, "none", torch.Generator()))
    messages = []
    rule = trainer.rule
    original = rule.module_step

    def spy(module, h, y_, message, stats):
        messages.append(message)
        return original(module, h, y_, message, stats)

    rule.module_step = spy
    stats = rule.train_step(trainer.net, x, y, active=list(range(len(trainer.net))))
    assert all(torch.equal(m["image"], x) for m in messages[1:])  # every module gets the raw image
    h = x
    for module in trainer.net:
        out = module(h)
        expected = F.cross_entropy(module.head(out), y)
        if not module.is_last:
            expected = expected + 0.7 * module.head.decoder(out, x)
        torch.testing.assert_close(stats[f"loss/{module.index}"], expected.detach(), rtol=1e-5, atol=1e-6)
        h = out.detach()


def test_auglocal_trains_and_runs_from_the_command_line(tmp_path):
    from locallearn.cli import main

    code = main(["train", "--method", "auglocal", "--model", "resnet20", "--dataset", "synthetic",
                 "--dataset-kwargs", "shape=3x8x8", "classes=4", "train=64", "test=32", "--model-kwargs", "width=4",
                 "--split", "layer", "--aux-depth", "3", "--pyramid-decay", "0.5", "--aux-selection", "sequential",
                 "--epochs", "1", "--batch-size", "32", "--threads", "1", "--no-progress", "--out", str(tmp_path / "r")])
    assert code == 0


@pytest.mark.parametrize("options,message", [
    ({"aux_depth": 1}, "aux-depth"), ({"aux_depth": 3, "min_depth": 4}, "min-depth"), ({"min_depth": 1}, "min-depth"),
    ({"aux_layout": "stage"}, "aux-layout"),
    ({"pyramid_decay": 1.5}, "pyramid-decay"), ({"aux_selection": "random"}, "aux-selection"),
    ({"recon_weight": -1.0}, "recon-weight")])
def test_impossible_options_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        RULES.get("auglocal")(**options)


def test_layerwise_auglocal_keeps_fewer_activations_than_bp():
    data = {"shape": (3, 16, 16), "classes": 4, "train": 64, "test": 32}
    bp = Trainer(tiny_config(method="bp", modules=1, max_steps=1, dataset_kwargs=data)).fit()
    aug = Trainer(tiny_config(method="auglocal", split="layer", modules=None, max_steps=1, dataset_kwargs=data,
                              rule_options={"aux_depth": 3})).fit()
    # one module and its auxiliary net are alive at a time, instead of the whole network
    assert aug["peak_activation_bytes"] < 0.6 * bp["peak_activation_bytes"]


def test_a_depth_that_merges_every_module_is_a_user_error():
    one_per_layer = [range(j, j + 1) for j in range(16)]
    assert len(RULES.get("auglocal")(aux_depth=15).arrange_modules(one_per_layer, 16)) == 2
    with pytest.raises(UserError, match="no module with an auxiliary net"):
        RULES.get("auglocal")(aux_depth=16).arrange_modules(one_per_layer, 16)
    # the former layout keeps every module: its nets near the top copy all the layers after them
    assert len(RULES.get("auglocal")(aux_depth=16, aux_layout="layer").arrange_modules(one_per_layer, 16)) == 16
