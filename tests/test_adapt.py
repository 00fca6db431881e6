"""The network adapter (models/adapt.py) without torchvision or timm: Sequentials, lists, LayeredModels,
shape and stage inference, errors, and the functional pieces (token layouts, class token + position
embedding, calls into a model's own methods) on small hand-built modules, each compared bitwise with
the forward written out in the model's own layout."""
import copy

import pytest
import torch
import torch.nn as nn

from locallearn import train
from locallearn.errors import UserError
from locallearn.models import LayeredModel, create_model
from locallearn.models.adapt import (CHANNELS_FIRST, CHANNELS_LAST, Adapted, OwnerCall, PatchTokens, Resample,
                                     TokenHead, layered_model, network_factory, stages_from_shapes)


def conv_block(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())


def small_cnn(classes=4):
    return nn.Sequential(conv_block(3, 8), conv_block(8, 8), conv_block(8, 16, stride=2), conv_block(16, 16),
                         nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes)))


def test_sequential_elements_are_the_layers_and_the_last_the_classifier():
    net = small_cnn()
    model = layered_model(net, (3, 8, 8), 4)
    assert all(a is b for a, b in zip(model.layers, list(net)[:-1])) and len(model.layers) == 4
    assert model.classifier is net[-1]
    assert {id(p) for p in model.parameters()} == {id(p) for p in net.parameters()}  # no copies
    assert model.layer_shapes == [(8, 8, 8), (8, 8, 8), (16, 4, 4), (16, 4, 4)]
    assert model.stages == [0, 0, 1, 1]  # the stride-2 block starts the second resolution stage
    net.eval()
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(model(x), net(x))


def test_a_list_of_modules_and_a_layered_model():
    blocks = [nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)]
    model = layered_model(blocks, (5,), 3)
    assert [type(m) for m in model.layers] == [nn.Linear, nn.ReLU] and model.classifier is blocks[-1]
    assert model.stages == [0, 0]  # flat features: one stage
    named = create_model("mlp", (1, 8), 3)
    assert layered_model(named, (1, 8), 3) is named


def test_stages_follow_resolution_changes():
    assert stages_from_shapes([(8, 16, 16), (8, 16, 16), (16, 8, 8), (32, 8, 8), (64,)]) == [0, 0, 1, 1, 2]
    assert stages_from_shapes([(4, 10), (8, 10)]) == [0, 0]  # only the channels change: same stage


def test_errors_name_the_problem():
    with pytest.raises(UserError, match=r"classifier \(Linear, the last element\) gives outputs of shape \(5,\).*"
                                        r"\(4,\)"):
        layered_model(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), (3, 2, 2), 4)
    with pytest.raises(UserError, match=r"layer 1 \(Linear\) fails on inputs of shape \(12,\)"):
        layered_model(nn.Sequential(nn.Flatten(), nn.Linear(10, 4), nn.Linear(4, 4)), (3, 2, 2), 4)
    with pytest.raises(UserError, match="element 1 of the network is a str"):
        layered_model([nn.Flatten(), "relu", nn.Linear(12, 4)], (3, 2, 2), 4)
    with pytest.raises(UserError, match="at least one layer and the classifier"):
        layered_model(nn.Sequential(nn.Linear(3, 4)), (3,), 4)

    class MyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(UserError, match=r"cannot split .*MyNet into layers; accepted: an nn.Sequential"):
        network_factory(MyNet())
    with pytest.raises(UserError, match="model must be a model name or a network, got int"):
        network_factory(3)


def test_a_sequential_subclass_with_its_own_forward_is_not_split():
    class Doubled(nn.Sequential):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(UserError, match="cannot split .*Doubled"):
        network_factory(Doubled(nn.Linear(3, 3), nn.Linear(3, 2)))


# ----------------------------------------------------------------------------- token layouts
class Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class TokenMLP(nn.Module):
    """A block on channels-last tokens, like a transformer block: x + MLP(LN(x))."""

    def __init__(self, c):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, 2 * c), nn.Linear(2 * c, c)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class TinyViT(nn.Module):
    """torchvision's ViT forward, written out: patches -> tokens -> class token -> + position ->
    blocks -> LayerNorm -> class token -> head."""

    def __init__(self, c=6, classes=3):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, c, 4, 4)
        self.class_token = nn.Parameter(torch.randn(1, 1, c))
        self.pos_embedding = nn.Parameter(torch.randn(1, 5, c))
        self.blocks = nn.Sequential(TokenMLP(c), TokenMLP(c))
        self.ln, self.head = nn.LayerNorm(c), nn.Linear(c, classes)

    def forward(self, x):
        x = self.conv_proj(x)
        n, c = x.shape[:2]
        x = x.reshape(n, c, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.blocks(x))[:, 0])


def test_class_token_position_embedding_and_token_head_equal_the_vit_forward():
    torch.manual_seed(0)
    vit = TinyViT()
    layers = [PatchTokens(vit.conv_proj, vit.class_token, vit.pos_embedding)]
    layers += [Adapted(b, CHANNELS_LAST, CHANNELS_LAST) for b in vit.blocks]
    model = layered_model(layers + [TokenHead(vit.ln, vit.head, "first")], (3, 8, 8), 3)
    assert model.layer_shapes == [(6, 5)] * 3  # channel-first tokens (C, T): class token + 2 x 2 patches
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(model(x), vit(x))
    tokens = model.layers[0](x)
    assert tokens.is_contiguous() and torch.equal(tokens[:, :, 0], (vit.class_token + vit.pos_embedding[:, :1])
                                                  .squeeze(1).expand(4, -1))
    # the mean of the tokens instead of the class token
    mean_head = TokenHead(vit.ln, vit.head, "mean")
    feats = torch.randn(2, 6, 5)
    assert torch.equal(mean_head(feats), vit.head(vit.ln(feats.transpose(1, 2)).mean(1)))


class TinySwin(nn.Module):
    """torchvision's Swin forward, written out: everything channels last until the head's permute."""

    def __init__(self, c=6, classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 2, 2), Permute(0, 2, 3, 1), nn.LayerNorm(c))
        self.block, self.merge = TokenMLP(c), nn.Linear(c, 2 * c)
        self.norm, self.head = nn.LayerNorm(2 * c), nn.Linear(2 * c, classes)

    def forward(self, x):
        x = self.merge(self.block(self.stem(x)))
        x = self.norm(x).permute(0, 3, 1, 2)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_channels_last_layers_give_channel_first_grids_and_equal_the_swin_forward():
    torch.manual_seed(0)
    swin = TinySwin()
    head = nn.Sequential(swin.norm, Permute(0, 3, 1, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), swin.head)
    layers = [Adapted(swin.stem, CHANNELS_FIRST, CHANNELS_LAST), Adapted(swin.block, CHANNELS_LAST, CHANNELS_LAST),
              Adapted(swin.merge, CHANNELS_LAST, CHANNELS_LAST), Adapted(head, CHANNELS_LAST, CHANNELS_FIRST)]
    model = layered_model(layers, (3, 8, 6), 3)
    assert model.layer_shapes == [(6, 4, 3), (6, 4, 3), (12, 4, 3)]  # (C, H, W): the grid of tokens
    assert [layer.built_for for layer in model.layers] == [(3, 8, 6), (6, 4, 3), (6, 4, 3)]
    x = torch.randn(2, 3, 8, 6)
    assert torch.equal(model(x), swin(x))
    assert torch.equal(model.layers[0](x), swin.stem(x).permute(0, 3, 1, 2))


class Owner(nn.Module):
    """A model whose forward calls its own methods (as timm's `_pos_embed` and `forward_head`)."""

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, 4))
        self.register_buffer("scale", torch.tensor(2.0))
        self.proj, self.head, self.unused = nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(9, 9)
        self.drop_rate = 0.5

    def _embed(self, x):
        return torch.cat([self.token.expand(len(x), -1, -1), self.proj(x)], 1) * self.scale

    def forward_head(self, x):
        return self.head(nn.functional.dropout(x.mean(1), self.drop_rate, training=self.training))


def test_owner_call_runs_the_models_own_methods_on_the_parts_it_holds():
    torch.manual_seed(0)
    owner = Owner()
    embed = OwnerCall(owner, ["token", "proj", "scale"], lambda o, x: o._embed(x))
    head = OwnerCall(owner, ["head"], lambda o, x: o.forward_head(x))
    assert embed.token is owner.token and embed.proj is owner.proj and "unused" not in dict(embed.named_modules())
    x = torch.randn(3, 2, 4)
    assert torch.equal(embed(x), owner._embed(x))
    head.eval()  # the owner's own training flag follows the layer's: no dropout in eval mode
    assert torch.equal(head(embed(x)), owner.head(owner._embed(x).mean(1)))
    head.train()
    torch.manual_seed(1)
    trained = head(embed(x))
    torch.manual_seed(1)
    assert torch.equal(trained, owner.head(nn.functional.dropout(owner._embed(x).mean(1), 0.5, training=True)))
    # a move (buffers are replaced, not changed in place) reaches the model's code
    embed.double()
    assert embed(x.double()).dtype == torch.float64 and owner.scale.dtype == torch.float64
    # a copy holds copies of its parts only, and runs on them
    copied = copy.deepcopy(head)
    assert copied.head is not owner.head and torch.equal(copied.head.weight, owner.head.weight)
    with torch.no_grad():
        copied.head.weight.add_(1.0)
    copied.eval()
    features = torch.randn(3, 4, 4)
    assert torch.equal(copied(features), copied.head(features.mean(1)))
    assert not torch.equal(copied(features), head.eval()(features))


def test_auxiliary_copies_of_blocks_the_generic_copy_cannot_rebuild():
    class Residual(nn.Module):  # needs its input and output to have the same shape
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)

        def forward(self, x):
            return x + self.conv(x)

    block = Adapted(Residual(4))
    block.built_for = (4, 8, 8)
    copy_ = block.auxiliary_copy((6, 16, 16), 4, True)
    assert isinstance(copy_[0], Resample) and copy_(torch.randn(2, 6, 16, 16)).shape == (2, 4, 8, 8)
    assert all(p is not q for p in copy_.parameters() for q in block.parameters())
    same = block.auxiliary_copy((4, 8, 8), 4, None)
    assert isinstance(same, Adapted) and same.built_for == (4, 8, 8)
    assert not torch.equal(same.module.conv.weight, block.module.conv.weight)  # re-initialised
    # a plain conv block is rebuilt for the new channels by the generic copy (AugLocal's own rule)
    plain = Adapted(conv_block(4, 8))
    plain.built_for = (4, 8, 8)
    rebuilt = plain.auxiliary_copy((6, 8, 8), 8, None)
    assert not isinstance(rebuilt, Adapted) and rebuilt[0].in_channels == 6


def test_auglocal_and_dgl_train_a_network_of_token_layers():
    torch.manual_seed(0)
    vit = TinyViT(classes=4)
    vit.blocks.append(TokenMLP(6))
    vit.blocks.append(TokenMLP(6))
    layers = [PatchTokens(vit.conv_proj, vit.class_token, vit.pos_embedding)]
    layers += [Adapted(b, CHANNELS_LAST, CHANNELS_LAST) for b in vit.blocks] + [TokenHead(vit.ln, vit.head)]
    data = (torch.randn(64, 3, 8, 8), torch.arange(64) % 4, torch.randn(16, 3, 8, 8), torch.arange(16) % 4)
    for method, settings in (("auglocal", {"split": "layer"}), ("dgl", {"modules": 2, "head": "token"})):
        before = [p.detach().clone() for p in vit.parameters()]
        result = train(model=layers, data=data, method=method, epochs=1, batch_size=16, threads=1,
                       progress=False, **settings)
        assert result["modules"] >= 2 and result["model"] == "list"
        assert all(not torch.equal(a, p) for a, p in zip(before, vit.parameters()))


def test_a_layered_model_trains_as_given():
    model = create_model("mlp", (1, 8), 3)
    weights = copy.deepcopy(model.state_dict())
    data = (torch.randn(32, 8), torch.arange(32) % 3, torch.randn(8, 8), torch.arange(8) % 3)
    train(model=model, data=data, epochs=1, batch_size=16, modules=2, threads=1, progress=False)
    assert any(not torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert isinstance(model, LayeredModel)
