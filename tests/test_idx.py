"""MNIST-format datasets read from idx files: exact contents, where the files are found, subsets,
and one clear line for every missing or damaged file. The idx files are made here; the system
folder (/usr/share/datasets) is pointed at an empty temporary folder, so no test depends on
whether Debian's dataset-fashion-mnist is installed."""
import gzip
import json
import struct
import types

import numpy as np
import pytest
import torch

from locallearn.cli import main
from locallearn.data import idx, load_dataset
from locallearn.errors import UserError

UBYTE, SHORT = 0x08, 0x0B
NAMES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def idx_bytes(array: np.ndarray, code: int = UBYTE) -> bytes:
    """The idx encoding, written from the format's definition: 0, 0, type code, number of dims,
    each dim as a big-endian uint32, then the values big-endian in C order."""
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + big_endian.tobytes()


def write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def make_dataset(folder, n_train=24, n_test=12, shape=(28, 28), seed=0, gz_train=True, gz_test=False,
                 spelling=lambda stem: stem):
    """Random images and labels written as the four idx files; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {"train_x": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
              "train_y": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),  # every class in training
              "test_x": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
              "test_y": rng.integers(0, 10, n_test).astype(np.uint8)}
    for key, array in arrays.items():
        gz = gz_train if key.startswith("train") else gz_test
        write(folder / (spelling(NAMES[key]) + (".gz" if gz else "")), idx_bytes(array))
    return arrays


@pytest.fixture(autouse=True)
def empty_system_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(idx, "SYSTEM_DIR", tmp_path_factory.mktemp("usr-share-datasets"))


def assert_holds(data, arrays) -> None:
    assert torch.equal(data.x_train, torch.from_numpy(arrays["train_x"]).unsqueeze(1))
    assert torch.equal(data.y_train, torch.from_numpy(arrays["train_y"].astype(np.int64)))
    assert torch.equal(data.x_test, torch.from_numpy(arrays["test_x"]).unsqueeze(1))
    assert torch.equal(data.y_test, torch.from_numpy(arrays["test_y"].astype(np.int64)))


def test_the_parser_decodes_a_hand_written_file(tmp_path):
    # a 2 x 2 array of big-endian int16: header 00 00 0b 02, dims 2 and 2, then 1, -2, 258, -32768
    path = tmp_path / "short.idx"
    path.write_bytes(bytes.fromhex("00000b02" "00000002" "00000002" "0001" "fffe" "0102" "8000"))
    array = idx.read_idx(path)
    assert array.dtype == np.int16 and array.tolist() == [[1, -2], [258, -32768]]
    wide = np.array([[1.5, -2.0, 3.25]], dtype=np.float64)  # type code 0x0e, written by the helper
    write(tmp_path / "double.idx.gz", idx_bytes(wide, 0x0E))
    assert np.array_equal(idx.read_idx(tmp_path / "double.idx.gz"), wide)


def test_images_and_labels_are_read_exactly_from_plain_and_gzipped_files(tmp_path):
    arrays = make_dataset(tmp_path / "fashion-mnist", shape=(7, 5))  # not square: a transposition would show
    data = load_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert_holds(data, arrays)
    assert data.x_train.dtype == torch.uint8 and data.input_shape == (1, 7, 5)
    assert data.num_classes == 10 and data.name == "fashion-mnist"
    assert data.default_augment == "none"  # the forward-gradient paper trains Fashion-MNIST without augmentation
    make_dataset(tmp_path / "mnist")
    make_dataset(tmp_path / "kmnist")
    assert load_dataset("mnist", data_dir=str(tmp_path)).default_augment == "crop"  # PredSim's MNIST setting
    assert load_dataset("kmnist", data_dir=str(tmp_path)).default_augment == "none"  # PredSim's KMNIST setting


def test_where_the_files_are_found(tmp_path, monkeypatch):
    # torchvision's download folder, with Kaggle's spelling of the names
    arrays = make_dataset(tmp_path / "tv" / "KMNIST" / "raw", spelling=lambda s: s.replace("-idx", ".idx"))
    assert_holds(load_dataset("kmnist", data_dir=str(tmp_path / "tv")), arrays)
    # --data-dir pointing at the files themselves
    arrays = make_dataset(tmp_path / "flat", seed=1, gz_train=False)
    assert_holds(load_dataset("mnist", data_dir=str(tmp_path / "flat")), arrays)
    # the system folder when --data-dir has nothing; --data-dir first when both have the files
    system = tmp_path / "system"
    monkeypatch.setattr(idx, "SYSTEM_DIR", system)
    from_system = make_dataset(system / "fashion-mnist", seed=2)
    assert_holds(load_dataset("fashion-mnist", data_dir=str(tmp_path / "none")), from_system)
    from_data_dir = make_dataset(tmp_path / "mine" / "fashion-mnist", seed=3)
    assert_holds(load_dataset("fashion-mnist", data_dir=str(tmp_path / "mine")), from_data_dir)


def test_train_and_test_subsets_are_seeded_rows_of_the_files(tmp_path):
    arrays = make_dataset(tmp_path / "mnist", n_train=40, n_test=20)
    data = load_dataset("mnist", data_dir=str(tmp_path), train=30, test=5)
    assert (data.num_train, data.num_test) == (30, 5)
    rows = [int(np.flatnonzero((arrays["train_x"] == x.numpy()[0]).all(axis=(1, 2)))[0]) for x in data.x_train]
    assert rows == sorted(rows) and len(set(rows)) == 30  # distinct rows, in file order
    assert data.y_train.tolist() == arrays["train_y"][rows].tolist()  # each image keeps its own label
    again = load_dataset("mnist", data_dir=str(tmp_path), train=30, test=5)
    other = load_dataset("mnist", data_dir=str(tmp_path), train=30, test=5, seed=1)
    assert torch.equal(again.x_train, data.x_train) and not torch.equal(other.x_train, data.x_train)
    assert_holds(load_dataset("mnist", data_dir=str(tmp_path), test=20), arrays)  # the whole set is the set
    for bad in ({"train": 0}, {"train": 41}, {"test": "all"}, {"train": True}):
        with pytest.raises(UserError, match="must be a whole number from 1 to"):
            load_dataset("mnist", data_dir=str(tmp_path), **bad)


def test_download_uses_torchvision_into_its_own_folder(tmp_path, monkeypatch):
    made = {}

    def fake_fashion_mnist(root, train, download):
        assert download and train
        made.update(make_dataset(tmp_path / "FashionMNIST" / "raw"))

    fake = types.SimpleNamespace(datasets=types.SimpleNamespace(FashionMNIST=fake_fashion_mnist))
    monkeypatch.setattr(idx, "_torchvision", lambda name: fake)
    assert_holds(load_dataset("fashion-mnist", data_dir=str(tmp_path), download=True), made)


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_training_on_idx_files_through_the_cli(tmp_path, capsys):
    make_dataset(tmp_path / "data" / "fashion-mnist", n_train=16, n_test=8)
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"),
                                 "--model", "resnet20", "--model-kwargs", "width=4", "--modules", "2",
                                 "--head", "linear", "--batch-size", "8", "--max-steps", "1", "--threads", "1",
                                 "--no-progress", "--no-measure", "--out", str(out)], capsys)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["dataset"] == "fashion-mnist" and result["steps"] == 1
    assert "on fashion-mnist: test top-1" in stdout


@pytest.mark.parametrize("name,hint", [
    ("fashion-mnist", "install it with: apt-get install dataset-fashion-mnist"),
    ("mnist", "put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1"),
])
def test_a_missing_dataset_is_one_line_with_how_to_get_it(name, hint, tmp_path, capsys):
    empty = tmp_path / "empty"
    code, _, err = run_cli(["train", "--dataset", name, "--data-dir", str(empty), "--threads", "1",
                            "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{name} not found (looked in {empty / name}," in err and hint in err
    assert f"into {empty / name}, or pass --download" in err


def corrupt(folder, key, data: bytes) -> None:
    for old in folder.glob(NAMES[key] + "*"):
        old.unlink()
    write(folder / NAMES[key], data)


@pytest.mark.parametrize("key,damage,message", [
    ("train_x", lambda b: b"\x08\x03" + b[2:], "not an idx file \\(magic number 0x0803"),
    ("train_x", lambda b: b[:2] + b"\x07" + b[3:], "not an idx file \\(magic number 0x000007"),
    ("train_x", lambda b: b[:-5], "truncated: the header declares shape \\(24, 28, 28\\) \\(18816 bytes of data\\) "
                                  "but 18811 bytes follow"),
    ("test_y", lambda b: b + b"\x00", "corrupt: the header declares shape \\(12,\\) \\(12 bytes of data\\) but 13"),
    ("test_y", lambda b: b[:6], "truncated idx header \\(1 dimensions need 8 bytes, the file has 6\\)"),
    ("test_y", lambda b: b"\x00", "not an idx file \\(1 bytes"),
    ("train_y", lambda b: idx_bytes(np.zeros(23, np.uint8)), "has 24 images but train-labels-idx1-ubyte has 23"),
    ("train_y", lambda b: idx_bytes(np.full(24, 10, np.uint8)), "label 10 is out of range \\(classes are 0..9\\)"),
    ("test_x", lambda b: idx_bytes(np.zeros((12, 28, 28), np.int16), SHORT), "expected uint8 images of shape"),
    ("test_x", lambda b: idx_bytes(np.zeros((12, 28, 27), np.uint8)), "training images are \\(28, 28\\) but test"),
])
def test_a_damaged_file_is_one_line_naming_it(key, damage, message, tmp_path):
    folder = tmp_path / "fashion-mnist"
    arrays = make_dataset(folder)
    corrupt(folder, key, damage(idx_bytes(arrays[key])))
    with pytest.raises(UserError, match=message) as error:
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert "\n" not in str(error.value)
    if "train-labels" not in message and "training images" not in message:
        assert str(folder / NAMES[key]) in str(error.value)


def test_a_broken_gzip_or_an_incomplete_folder_is_one_line(tmp_path, capsys):
    folder = tmp_path / "fashion-mnist"
    make_dataset(folder)
    gz = folder / (NAMES["train_x"] + ".gz")
    gz.write_bytes(gz.read_bytes()[:100])  # a download cut short
    code, _, err = run_cli(["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--threads", "1",
                            "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.count("\n") == 1 and f"{gz}: cannot read it (" in err, err
    gz.unlink()
    with pytest.raises(UserError, match=f"{folder} holds only some of the fashion-mnist files: "
                                        "train-images-idx3-ubyte\\[.gz\\] missing"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
