"""Shared helpers of the tests."""
import torch

from locallearn import TrainConfig


def tiny_config(**overrides) -> TrainConfig:
    """A run that takes well under a second: a small ResNet on seeded synthetic 3x8x8 data."""
    settings = dict(method="dgl", model="resnet20", dataset="synthetic", modules=2, head="linear", epochs=1,
                    batch_size=32, lr=0.05, seed=0, threads=1, progress=False,
                    dataset_kwargs={"shape": (3, 8, 8), "classes": 4, "train": 128, "test": 64},
                    model_kwargs={"width": 4})
    settings.update(overrides)
    return TrainConfig(**settings)


def parameters_of(trainer) -> dict:
    state = {f"model.{k}": v for k, v in trainer.net.model.state_dict().items()}
    state.update({f"heads.{k}": v for k, v in trainer.net.heads.state_dict().items()})
    return {k: v.detach().clone() for k, v in state.items()}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


# narrow, shallow versions of the seed architectures (models/vit.py, swin.py, mobilenet.py,
# efficientnet.py, regnet.py) that keep every kind of layer: shifted and plain Swin blocks, patch
# merging, inverted residuals with and without shortcut, grouped bottlenecks with projections
SEED_MODEL_KWARGS = {
    "vit-ti": {"dim": 16, "depth": 2, "heads": 2},
    "vit-s": {"dim": 16, "depth": 2, "heads": 2},
    "swin-t": {"dim": 8, "depths": (2, 1, 1, 1), "heads": (1, 2, 2, 2)},
    "swin-s": {"dim": 8, "depths": (2, 1, 1, 1), "heads": (1, 2, 2, 2)},
    "mobilenetv2": {"width": 0.1, "last_channels": 16},
    "efficientnet-b0": {"width": 0.1, "depth": 0.1},
    "regnetx-400mf": {"depths": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "group_width": 8, "stem_width": 8},
}
