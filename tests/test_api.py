"""The Python API: locallearn.train with a network and data of one's own, or names, in a few lines."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import locallearn
from locallearn import TrainConfig, Trainer
from locallearn.errors import Interrupted, UserError

from helpers import tiny_config

QUICK = dict(epochs=1, batch_size=32, threads=1, progress=False)


def own_cnn(classes=4, seed=0):
    torch.manual_seed(seed)

    def block(cin, cout, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(block(3, 8), block(8, 8), block(8, 16, 2), block(16, 16),
                         nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes)))


def arrays(n_train=96, n_test=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n_train, 3, 8, 8)).astype(np.float32), np.arange(n_train) % 4,
            rng.normal(size=(n_test, 3, 8, 8)).astype(np.float32), np.arange(n_test) % 4)


@pytest.mark.parametrize("method, settings", [("dgl", {"modules": 2}), ("sgr", {"modules": 2, "sgr_lambda": 10}),
                                              ("auglocal", {"split": "layer", "aux_depth": 2}),
                                              ("backlink", {"modules": 2, "link_length": 1})])
def test_own_sequential_trains_with_each_method(method, settings):
    net = own_cnn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = locallearn.train(model=net, data=arrays(), method=method, **settings, **QUICK)
    assert result["method"] == method and result["model"] == "Sequential" and result["dataset"] == "arrays"
    assert result["modules"] >= 2 and 0 <= result["test_top1"] <= 100
    # the user's own modules were trained: every weight and bias moved
    moved = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert moved == [k for k, v in net.state_dict().items() if v.is_floating_point()]


def test_config_and_keywords_give_the_same_run(tmp_path):
    settings = dict(method="sgr", sgr_lambda=1.0, modules=2, lr=0.1, seed=3, **QUICK)
    a = locallearn.train(TrainConfig(method="sgr", rule_options={"sgr_lambda": 1.0}, modules=2, lr=0.1, seed=3,
                                     **QUICK), model=own_cnn(), data=arrays())
    net_b = own_cnn()
    b = locallearn.train(model=net_b, data=arrays(), **settings)
    # a config and keywords over it: the keywords win
    net_c = own_cnn()
    c = locallearn.train(TrainConfig(method="dgl", lr=0.5, **QUICK), model=net_c, data=arrays(),
                         method="sgr", sgr_lambda=1.0, modules=2, lr=0.1, seed=3)
    for key in ("test_top1", "test_loss", "local_top1", "config"):
        assert a[key] == b[key] == c[key]
    for x, y in zip(net_b.state_dict().values(), net_c.state_dict().values()):
        assert torch.equal(x, y)


def test_a_named_model_trains_as_the_engine_does(tmp_path):
    cfg = tiny_config(out=str(tmp_path / "engine"))
    expected = Trainer(cfg).fit()
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("out", "model")}
    result = locallearn.train(model="resnet20", out=str(tmp_path / "api"), **settings)
    assert result["model"] == "resnet20" and result["test_loss"] == expected["test_loss"]
    engine_weights = torch.load(tmp_path / "engine" / "model.pt", weights_only=True)
    api_weights = torch.load(tmp_path / "api" / "model.pt", weights_only=True)
    assert all(torch.equal(engine_weights[k], api_weights[k]) for k in engine_weights)


def test_out_writes_the_run_files_and_resume_continues_a_users_network(tmp_path):
    data = arrays()
    settings = dict(method="dgl", modules=2, out=str(tmp_path / "run"), **{**QUICK, "epochs": 2})
    # one uninterrupted run, and one stopped after 4 steps, then resumed with the network passed again
    whole = own_cnn()
    expected = locallearn.train(model=whole, data=data, **{**settings, "out": str(tmp_path / "whole")})

    def stop_after_four(trainer):
        trainer.stop_requested = trainer.position.global_step >= 4

    with pytest.raises(Interrupted):
        locallearn.train(model=own_cnn(), data=data, callbacks=[stop_after_four], **settings)
    with pytest.raises(UserError, match="resumes when the same network is passed again"):
        locallearn.train(resume=True, out=settings["out"], data=data)
    again = own_cnn(seed=7)  # the same architecture, any weights: the checkpoint's are loaded into it
    result = locallearn.train(model=again, data=data, resume=True, out=settings["out"])
    assert result["test_loss"] == expected["test_loss"] and result["steps"] == expected["steps"] == 6
    for x, y in zip(whole.state_dict().values(), again.state_dict().values()):
        assert torch.equal(x, y)
    for name in ("result.json", "log.csv", "config.json", "model.pt", "heads.pt", "checkpoint.pt"):
        assert (tmp_path / "run" / name).exists()
    assert json.loads((tmp_path / "run" / "result.json").read_text())["test_loss"] == result["test_loss"]


class PairDataset(Dataset):
    """A map-style Dataset of (image as an HWC uint8 array, label) pairs, as image datasets often give."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_every_kind_of_data_gives_the_same_run(tmp_path):
    x_train, y_train, x_test, y_test = arrays()
    t = [torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test)]
    train_set, test_set = TensorDataset(t[0], t[1]), TensorDataset(t[2], t[3])
    np.savez(tmp_path / "data.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    kinds = {"numpy": (x_train, y_train, x_test, y_test), "tensors": tuple(t), "datasets": (train_set, test_set),
             "loaders": (DataLoader(train_set, batch_size=10), DataLoader(test_set, batch_size=7)),
             "npz path": str(tmp_path / "data.npz"),
             "mapping": {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}}
    results = {kind: locallearn.train(model=own_cnn(), data=data, modules=2, **QUICK) for kind, data in kinds.items()}
    reference = results.pop("numpy")
    for kind, result in results.items():
        assert result["test_loss"] == reference["test_loss"], kind
    assert results["datasets"]["dataset"] == "TensorDataset" and results["npz path"]["dataset"].endswith("data.npz")


def test_uint8_channels_last_images_from_a_dataset_are_read_like_an_npz():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 8, 8, 3), dtype=np.uint8)
    y = np.arange(64) % 4
    from_arrays = locallearn.train(model=own_cnn(), data=(x, y, x[:16], y[:16]), modules=2, **QUICK)
    from_dataset = locallearn.train(model=own_cnn(), data=(PairDataset(x, y), PairDataset(x[:16], y[:16])),
                                    modules=2, **QUICK)
    assert from_dataset["test_loss"] == from_arrays["test_loss"]
    with pytest.raises(UserError, match=r"would take .* GiB in memory \(more than max_gib=1e-06\)"):
        locallearn.train(model=own_cnn(), data=(PairDataset(x, y), PairDataset(x, y)), dataset_kwargs={"max_gib": 1e-6},
                         **QUICK)


def test_a_dataset_name_as_on_the_command_line():
    result = locallearn.train(data="synthetic", model="mlp", dataset_kwargs={"shape": (1, 10), "classes": 3,
                                                                             "train": 64, "test": 32}, **QUICK)
    assert result["dataset"] == "synthetic" and result["model"] == "mlp"


def test_bad_keywords_and_data_are_one_line_errors():
    with pytest.raises(UserError, match="unknown keyword 'sgr_lamda'; did you mean sgr_lambda"):
        locallearn.train(method="sgr", sgr_lamda=1)
    with pytest.raises(UserError, match="unknown keyword 'epoch'; did you mean epochs"):
        locallearn.train(epoch=1)
    with pytest.raises(UserError, match="sgr_lambda is an option of .*sgr.*, not of method dgl"):
        locallearn.train(method="dgl", sgr_lambda=1)
    with pytest.raises(UserError, match="cannot use data of type int"):
        locallearn.train(model=own_cnn(), data=3, **QUICK)
    with pytest.raises(UserError, match="y_train must hold integer class labels"):
        x_train, y_train, x_test, y_test = arrays()
        locallearn.train(model=own_cnn(), data=(x_train, y_train + 0.5, x_test, y_test), **QUICK)
    with pytest.raises(UserError, match="model_kwargs .* configure a named model"):
        locallearn.train(model=own_cnn(), data=arrays(), model_kwargs={"width": 4}, **QUICK)
    with pytest.raises(UserError, match="dataset_kwargs shape do not apply to data given as objects"):
        locallearn.train(model=own_cnn(), data=arrays(), dataset_kwargs={"shape": (3, 8, 8)}, **QUICK)
    with pytest.raises(UserError, match="the classifier .* must give one score per class, \\(3,\\)"):
        x_train, y_train, x_test, y_test = arrays()
        locallearn.train(model=own_cnn(classes=4), data=(x_train, y_train % 3, x_test, y_test % 3), **QUICK)


def test_no_registry_is_touched_so_a_cell_can_run_again():
    for _ in range(2):  # as a notebook cell run twice: new classes, new networks, same names
        class Net(nn.Sequential):
            pass

        net = Net(*own_cnn())
        result = locallearn.train(model=net, data=arrays(), modules=2, **QUICK)
        assert result["model"] == "Net"
    from locallearn.models import MODELS
    assert "Net" not in MODELS and "Sequential" not in MODELS


def test_resume_of_a_named_model_needs_only_the_directory(tmp_path):
    expected = locallearn.train(tiny_config(epochs=2, out=str(tmp_path / "whole")))

    def stop_after_five(trainer):
        trainer.stop_requested = trainer.position.global_step >= 5

    with pytest.raises(Interrupted):
        locallearn.train(tiny_config(epochs=2, out=str(tmp_path / "run")), callbacks=[stop_after_five])
    result = locallearn.train(resume=True, out=str(tmp_path / "run"))
    assert result["steps"] == expected["steps"] == 8 and result["test_loss"] == expected["test_loss"]
    with pytest.raises(UserError, match="these flags differ from it: --method \\(only --epochs"):
        locallearn.train(resume=True, out=str(tmp_path / "run"), lr=0.3, method="sgr")
