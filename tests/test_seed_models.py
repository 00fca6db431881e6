"""The seed architectures (ViT, Swin, MobileNetV2, EfficientNet-B0, RegNetX-400MF): parameter
counts of the reference implementations, the CIFAR / MNIST configurations, Swin's windows, and
one training step of every method on CIFAR-shaped and 28x28 grayscale inputs."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import SEED_MODEL_KWARGS, parameters_of
from locallearn import TrainConfig, Trainer, auxnets
from locallearn.cli import main
from locallearn.errors import UserError
from locallearn.models import create_model
from locallearn.models.mobilenet import InvertedResidual
from locallearn.models.regnet import RegNetBottleneck
from locallearn.models.swin import SwinBlock, relative_position_index
from locallearn.models.transformer import PatchMerging, TokenClassifier, attention
from locallearn.models.vit import TransformerBlock
from locallearn.rules import RULES
from locallearn.rules.bpfree import BPFreeRule

# parameters at 224 x 224 with 1000 classes: torchvision's `num_params` metadata (swin_t, swin_s,
# mobilenet_v2, efficientnet_b0, regnet_x_400mf) and timm's vit_tiny/small_patch16_224
TIMM_VIT_TI, TIMM_VIT_S = 5_717_416, 22_050_664
REFERENCE_COUNTS = {"swin-t": 28_288_354, "swin-s": 49_606_258, "mobilenetv2": 3_504_872,
                    "efficientnet-b0": 5_288_548}
TORCHVISION_REGNETX_400MF = 5_495_976
PYTORCHCV_REGNETX_400MF = 5_157_512  # osmr/imgclsmob's regnetx004 test: pycls's widths (32, 64, 160, 384)
LAYERS = {"vit-ti": 13, "vit-s": 13, "swin-t": 16, "swin-s": 28, "mobilenetv2": 19, "efficientnet-b0": 18,
          "regnetx-400mf": 23}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _imagenet_model(name: str, **kwargs):
    with torch.device("meta"):  # shapes and counts only: no memory, no initialisation cost
        return create_model(name, (3, 224, 224), 1000, **kwargs)


@pytest.mark.parametrize("name,count", sorted(REFERENCE_COUNTS.items()))
def test_parameter_counts_equal_torchvision(name, count):
    model = _imagenet_model(name)
    assert _count(model) == count
    assert len(model.layers) == LAYERS[name]


def test_vit_counts_are_timm_without_the_class_token():
    # timm's ViT classifies a class token: one token (dim) and its position embedding (dim) more
    for name, dim, reference in (("vit-ti", 192, TIMM_VIT_TI), ("vit-s", 384, TIMM_VIT_S)):
        model = _imagenet_model(name)
        assert _count(model) == reference - 2 * dim
        assert len(model.layers) == LAYERS[name] and model.layer_shapes[0] == (dim, 14, 14)  # 16 x 16 patches


def test_regnet_widths_of_the_paper_and_of_torchvision():
    assert _count(_imagenet_model("regnetx-400mf", widths=(32, 64, 160, 400))) == TORCHVISION_REGNETX_400MF
    paper = _imagenet_model("regnetx-400mf")  # pycls rounds the last stage's 392 to 384, torchvision to 400
    assert _count(paper) == PYTORCHCV_REGNETX_400MF and round(_count(paper) / 1e6, 1) == 5.2  # the paper: 5.2M
    assert len(paper.layers) == LAYERS["regnetx-400mf"]


# (first layer, last layer) output shapes of the default configurations
SHAPES = {
    (3, 224, 224): {"vit-s": ((384, 14, 14), (384, 14, 14)), "swin-t": ((96, 56, 56), (768, 7, 7)),
                    "mobilenetv2": ((32, 112, 112), (1280, 7, 7)), "efficientnet-b0": ((32, 112, 112), (1280, 7, 7)),
                    "regnetx-400mf": ((32, 112, 112), (384, 7, 7))},
    (3, 32, 32): {"vit-s": ((384, 8, 8), (384, 8, 8)), "swin-t": ((96, 16, 16), (768, 2, 2)),
                  "mobilenetv2": ((32, 32, 32), (1280, 4, 4)), "efficientnet-b0": ((32, 32, 32), (1280, 2, 2)),
                  "regnetx-400mf": ((32, 32, 32), (384, 8, 8))},
    (1, 28, 28): {"vit-s": ((384, 7, 7), (384, 7, 7)), "swin-t": ((96, 14, 14), (768, 2, 2)),
                  "mobilenetv2": ((32, 28, 28), (1280, 4, 4)), "efficientnet-b0": ((32, 28, 28), (1280, 2, 2)),
                  "regnetx-400mf": ((32, 28, 28), (384, 7, 7))},
}


@pytest.mark.parametrize("input_shape", sorted(SHAPES))
def test_default_configurations_follow_the_input_size(input_shape):
    for name, (first, last) in SHAPES[input_shape].items():
        with torch.device("meta"):
            model = create_model(name, input_shape, 10)
        assert (model.layer_shapes[0], model.layer_shapes[-1]) == (first, last), name
        assert len(model.layers) == LAYERS[name]
        assert model(torch.zeros(2, *input_shape, device="meta")).shape == (2, 10)


def test_swin_windows_and_stages_per_input_size():
    expected = {(3, 224, 224): [(7, 7), (7, 7), (7, 7), (7, 7)], (3, 32, 32): [(4, 4), (4, 4), (4, 4), (2, 2)],
                (1, 28, 28): [(7, 7), (7, 7), (4, 4), (2, 2)]}
    for shape, windows in expected.items():
        with torch.device("meta"):
            model = create_model("swin-t", shape, 10)
        found = {}
        for layer, stage in zip(model.layers, model.stages):
            if isinstance(layer, SwinBlock):
                found.setdefault(stage, layer.window)
        assert [found[s] for s in range(4)] == windows, shape
        # the patch embedding and stage 1 share stage 0; each merging layer starts the next stage
        assert model.stages == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3]
        assert all(isinstance(model.layers[i], PatchMerging) for i in (3, 6, 13))


def test_attention_equals_torch_scaled_dot_product_attention():
    torch.manual_seed(0)
    tokens, bias = torch.randn(3, 5, 8), torch.randn(1, 2, 5, 5)
    qkv, proj = nn.Linear(8, 24), nn.Linear(8, 8)
    q, k, v = qkv(tokens).reshape(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    reference = proj(F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(3, 5, 8))
    assert torch.allclose(attention(tokens, qkv, proj, heads=2, bias=bias), reference, atol=1e-6)


def test_relative_position_index_of_a_2x2_window():
    # tokens (0,0), (0,1), (1,0), (1,1); offset (dh, dw) of a - b is read at row (dh + 1) * 3 + (dw + 1)
    expected = [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    assert relative_position_index((2, 2)).view(4, 4).tolist() == expected


def _influence(block: nn.Module, grid: int, token: tuple[int, int]) -> torch.Tensor:
    """Which output tokens change when one input token changes (grid x grid booleans)."""
    x = torch.randn(1, 8, grid, grid)
    moved = x.clone()
    moved[0, :, token[0], token[1]] += torch.randn(8)  # not a constant: LayerNorm would erase it
    with torch.no_grad():
        return (block(moved) - block(x)).abs().amax(dim=1)[0] > 1e-4


def test_swin_windows_and_shifted_windows_see_the_tokens_of_the_paper():
    torch.manual_seed(0)
    grid, window = 8, (4, 4)
    plain, shifted = SwinBlock(8, 2, window, shifted=False), SwinBlock(8, 2, window, shifted=True)
    for block in (plain, shifted):
        for p in block.parameters():
            nn.init.normal_(p, std=0.5)

    def square(rows, cols):
        mask = torch.zeros(grid, grid, dtype=torch.bool)
        mask[rows, cols] = True
        return mask

    # plain windows tile the grid from (0, 0); shifted windows are displaced by half a window,
    # (-2..1, 2..5, 6..9) per axis, cut at the border of the grid (no wrap-around)
    assert torch.equal(_influence(plain, grid, (0, 0)), square(slice(0, 4), slice(0, 4)))
    assert torch.equal(_influence(plain, grid, (5, 2)), square(slice(4, 8), slice(0, 4)))
    assert torch.equal(_influence(shifted, grid, (3, 3)), square(slice(2, 6), slice(2, 6)))
    assert torch.equal(_influence(shifted, grid, (0, 0)), square(slice(0, 2), slice(0, 2)))
    assert torch.equal(_influence(shifted, grid, (7, 4)), square(slice(6, 8), slice(2, 6)))


def test_a_swin_block_whose_window_covers_the_grid_is_a_vit_block():
    torch.manual_seed(0)
    swin, vit = SwinBlock(8, 2, (4, 4), shifted=False), TransformerBlock(8, 2)
    for name, p in vit.named_parameters():
        nn.init.normal_(p, std=0.3)
        swin.get_submodule(name.rpartition(".")[0] or name).get_parameter(name.rpartition(".")[2]).data.copy_(p.data)
    for norm in (vit.norm1, vit.norm2):
        norm.eps = swin.norm1.eps
    nn.init.zeros_(swin.relative_position_bias_table)
    x = torch.randn(2, 8, 4, 4)
    assert torch.allclose(swin(x), vit(x), atol=1e-5)


def test_patch_merging_concatenates_in_torchvisions_order_and_pads_odd_grids():
    merging = PatchMerging(2, 1, 2)
    seen = {}
    merging.norm.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)  # rows (1, 2) and (3, 4)
    assert merging(x).shape == (1, 2, 1, 1)
    assert seen["x"].flatten().tolist() == [1.0, 3.0, 2.0, 4.0]  # x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]
    assert merging(torch.randn(2, 1, 5, 3)).shape == (2, 2, 3, 2)


def test_token_classifier_normalises_channels_then_averages_tokens():
    torch.manual_seed(0)
    head, x = TokenClassifier(6, 3), torch.randn(2, 6, 4, 5)
    tokens = x.flatten(2).transpose(1, 2)
    normalised = (tokens - tokens.mean(-1, keepdim=True)) / torch.sqrt(tokens.var(-1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(head(x), head.fc(normalised.mean(1)), atol=1e-5)


def test_auglocal_copies_of_the_new_blocks():
    # MobileNetV2 on CIFAR: the aux net of layer 1 (16 channels, 32 x 32) copies layer 7 (64 channels,
    # 8 x 8), halving once: the stride goes on the depthwise conv, as in the network's own blocks
    model = create_model("mobilenetv2", (3, 32, 32), 10, width=0.5, last_channels=32)
    aux = auxnets.build_aux_net(model, 1, 3)
    copy = aux[0]
    assert isinstance(copy, InvertedResidual) and auxnets.output_shape(copy, model.layer_shapes[1])[1:] == (16, 16)
    depthwise = copy.body[1][0]
    assert depthwise.groups == depthwise.in_channels and depthwise.stride == (2, 2)
    assert copy.body[0][0].in_channels == model.layer_shapes[1][0] and not copy.residual
    # RegNet: a copy fed another width gets the projection shortcut it then needs
    regnet = create_model("regnetx-400mf", (3, 32, 32), 10, **SEED_MODEL_KWARGS["regnetx-400mf"])
    copy = auxnets.build_aux_net(regnet, 0, 1)[0]
    assert isinstance(copy, RegNetBottleneck) and copy.projection is not None
    assert auxnets.output_shape(copy, regnet.layer_shapes[0]) == (16, 16, 16)
    # Swin: a copy of a later stage's block merges patches to reach that stage's width, one halving
    swin = create_model("swin-t", (3, 32, 32), 10, dim=8, heads=(1, 2, 2, 2))
    aux = auxnets.build_aux_net(swin, 0, 3)
    shape = swin.layer_shapes[0]
    for part, index in zip(list(aux)[:-1], auxnets.selected_indices("uniform", 0, len(swin.layers), 3)):
        assert isinstance(part[0], PatchMerging) and isinstance(part[1], SwinBlock)
        shape = auxnets.output_shape(part, shape)
        assert shape == swin.layer_shapes[index]
    assert isinstance(aux[-1], TokenClassifier)
    primary = {p.data_ptr() for p in swin.parameters()}
    assert not any(p.data_ptr() in primary for p in aux.parameters())


# ------------------------------------------------------------------- every method, one step
FAMILIES = ("vit-s", "swin-t", "mobilenetv2", "efficientnet-b0", "regnetx-400mf")
FIRST_BLOCK = {"vit-s": "PatchEmbedding", "swin-t": "PatchEmbedding", "mobilenetv2": "InvertedResidual",
               "efficientnet-b0": "InvertedResidual", "regnetx-400mf": "RegNetBottleneck"}
HAS_DROPOUT = ("mobilenetv2", "efficientnet-b0")  # the classifier's dropout 0.2, as the references


def _config(model: str, shape, method: str, **overrides) -> TrainConfig:
    settings = dict(method=method, model=model, dataset="synthetic", modules=1 if method == "bp" else 2,
                    head="conv", epochs=1, max_steps=1, batch_size=8, lr=0.01, seed=0, threads=1, progress=False,
                    dataset_kwargs={"shape": shape, "classes": 4, "train": 8, "test": 8},
                    model_kwargs=dict(SEED_MODEL_KWARGS[model]))
    settings.update(overrides)
    return TrainConfig(**settings)


def _trains_one_step(cfg: TrainConfig) -> None:
    trainer = Trainer(cfg)
    before = parameters_of(trainer)
    result = trainer.fit()
    after = parameters_of(trainer)
    assert math.isfinite(result["test_top1"])
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model."))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)], ids=["cifar", "28x28"])
@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize("method", RULES.names())
def test_every_method_trains_one_step(method, model, shape):
    bp_free = issubclass(RULES.get(method), BPFreeRule)
    split = "layer" if bp_free or method == "auglocal" else "even"  # AugLocal's setting: one layer per module
    cfg = _config(model, shape, method, split=split, modules=None if split == "layer" else 1 if method == "bp" else 2)
    if method == "auglocal":  # the tiny ViTs have 3 layers: the authors' layout leaves aux nets only for d = 2
        cfg.rule_options = {"aux_depth": 2}
    if bp_free:  # one transform per unit, no residual paths: these blocks are not such layers
        with pytest.raises(UserError, match=f"contains a {FIRST_BLOCK[model]} whose forward pass is not a plain chain"):
            Trainer(cfg)
    elif method == "fwdgrad" and model in HAS_DROPOUT:  # its JVPs re-run later blocks: dropout masks would differ
        jvp = TrainConfig(**{**cfg.to_dict(), "rule_options": {"fwd_mode": "jvp"}})
        with pytest.raises(UserError, match="dropout=0"):
            Trainer(jvp)
        _trains_one_step(cfg)  # the emulation (the default) takes each dropout mask once
        jvp.model_kwargs["dropout"] = 0.0
        _trains_one_step(jvp)
    else:
        _trains_one_step(cfg)


@pytest.mark.parametrize("model", ["vit-ti", "swin-s"])
def test_the_other_sizes_train_one_step(model):
    _trains_one_step(_config(model, (3, 32, 32), "dgl"))


def test_locallearn_train_on_mnist_shaped_input(capsys, tmp_path):
    code = main(["train", "--model", "swin-t", "--model-kwargs", "dim=8", "depths=2,1,1,1", "heads=1,2,2,2",
                 "--method", "auglocal", "--split", "layer", "--dataset", "synthetic", "--dataset-kwargs",
                 "shape=1x28x28", "classes=4", "train=16", "test=8", "--batch-size", "8", "--max-steps", "1",
                 "--threads", "1", "--no-progress", "--out", str(tmp_path / "run")])
    # 9 layers, d = 3 (2 copied layers): a layer whose aux net would copy every later layer gets none, so the
    # last 3 layers form one module with the classifier (the authors' layout): 6 + 1 modules
    assert code == 0 and "auglocal swin-t K=7" in capsys.readouterr().out
