"""torchvision and timm networks through the adapter (models/adapt.py), every family:

- the chain of layers is EXACTLY the model's own forward (bitwise, in eval mode and in train mode
  with the same random draws: dropout, stochastic depth, batch statistics);
- the layers hold the model's own parameters, every one of them (no copies);
- one training step with dgl and with auglocal moves the model's own weights.

torchvision and timm are optional: these tests need them and are skipped where they are missing
(CI has neither; run them with both installed, see docs/python-api.md).
"""
import pytest
import torch
import torch.nn as nn

import locallearn
from locallearn.models.adapt import layered_model

SHAPE, CLASSES = (3, 32, 32), 10


def _tv():
    return pytest.importorskip("torchvision.models")


def _timm():
    return pytest.importorskip("timm")


def _small_vgg_classifier(m):
    # torchvision's VGG classifier has 4096-wide hidden layers; the same structure, narrower, keeps the test fast
    m.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 64),
                                 nn.ReLU(True), nn.Dropout(), nn.Linear(64, CLASSES))
    return m


TORCHVISION = {
    "resnet18": lambda tv: tv.resnet18(num_classes=CLASSES),
    "resnet50": lambda tv: tv.resnet50(num_classes=CLASSES),
    "vgg11_bn": lambda tv: _small_vgg_classifier(tv.vgg11_bn(num_classes=CLASSES)),
    "mobilenet_v2": lambda tv: tv.mobilenet_v2(num_classes=CLASSES, width_mult=0.25),
    "mobilenet_v3_small": lambda tv: tv.mobilenet_v3_small(num_classes=CLASSES),
    "efficientnet_b0": lambda tv: tv.efficientnet_b0(num_classes=CLASSES),
    "regnet_y_400mf": lambda tv: tv.regnet_y_400mf(num_classes=CLASSES),
    "vit": lambda tv: tv.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16,
                                           mlp_dim=32, num_classes=CLASSES),
    "swin": lambda tv: tv.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                          window_size=[4, 4], num_classes=CLASSES),
}
TIMM = {
    "resnet18": dict(),
    "vit_tiny_patch16_224": dict(img_size=32, patch_size=8, depth=3),
    "convnext_atto": dict(),
    "efficientnet_b0": dict(),
    "mobilenetv3_small_050": dict(),
    "regnetx_002": dict(),
    "swin_tiny_patch4_window7_224": dict(img_size=32, window_size=4, depths=(2, 2), embed_dim=16, num_heads=(2, 2)),
}
CASES = [("torchvision", name) for name in TORCHVISION] + [("timm", name) for name in TIMM]
EXPECTED_LAYERS = {  # stem + blocks (+ hidden classifier layers), as counted from the architectures
    ("torchvision", "resnet18"): 1 + 8, ("torchvision", "resnet50"): 1 + 16,
    ("torchvision", "vgg11_bn"): 8 + 2, ("torchvision", "vit"): 1 + 3, ("torchvision", "swin"): 1 + 2 + 1 + 2,
    ("timm", "resnet18"): 1 + 8, ("timm", "vit_tiny_patch16_224"): 1 + 3,
    ("timm", "swin_tiny_patch4_window7_224"): 1 + 2 + 1 + 2,
}


def build(source: str, name: str) -> nn.Module:
    torch.manual_seed(0)
    if source == "torchvision":
        return TORCHVISION[name](_tv())
    return _timm().create_model(name, num_classes=CLASSES, **TIMM[name])


@pytest.mark.parametrize("source, name", CASES)
def test_the_layers_are_the_models_own_forward(source, name):
    net = build(source, name)
    model = layered_model(net, SHAPE, CLASSES)
    assert {id(p) for p in model.parameters()} == {id(p) for p in net.parameters()}
    if (source, name) in EXPECTED_LAYERS:
        assert len(model.layers) == EXPECTED_LAYERS[(source, name)]
    for shape in model.layer_shapes:  # channel-first: (C,), (C, T) tokens or (C, H, W) grids
        assert len(shape) in (1, 2, 3)
    x = torch.randn(4, *SHAPE)
    net.eval()
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    net.train()
    with torch.no_grad():
        torch.manual_seed(1)
        ours = model(x)
        torch.manual_seed(1)
        assert torch.equal(ours, net(x))


@pytest.mark.parametrize("source, name", CASES)
@pytest.mark.parametrize("method", ["dgl", "auglocal"])
def test_one_training_step_trains_the_models_weights(source, name, method):
    net = build(source, name)
    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    x = torch.randn(16, *SHAPE)
    y = torch.arange(16) % CLASSES
    options = {"aux_depth": 2} if method == "auglocal" else {"head": "linear"}
    trainers = []
    result = locallearn.train(model=net, data=(x, y, x, y), method=method, modules=3, max_steps=1, batch_size=8,
                              threads=1, progress=False, measure=False, callbacks=[trainers.append], **options)
    assert result["steps"] == 1 and result["modules"] >= 2
    # every parameter of the model is trained by some module's optimizer ...
    optimized = {id(p) for module in trainers[0].net for group in module.optimizer.param_groups
                 for p in group["params"]}
    assert all(id(p) in optimized for p in net.parameters())
    # ... and the stem's moved (inside blocks, zero-initialised residual BNs (timm) and classifiers (ViT) keep
    # some gradients at zero in the first step)
    stem = {id(p) for p in trainers[0].net.model.layers[0].parameters()}
    assert stem and all(not torch.equal(before[k], p.detach()) for k, p in net.named_parameters() if id(p) in stem)
