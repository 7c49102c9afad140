"""Data: fixtures in torchvision's own on-disk formats through the real loading code; a truncated
prepared file is refused by the training CLI in one line."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100

import normdrop.train as train_module
from normdrop.data import (
    DataError,
    crop_flip,
    load_prepared,
    load_raw,
    normalize,
    prepare,
    split_train_val,
    standardization,
)

RNG = np.random.default_rng(0)


def write_idx(path, array: np.ndarray):
    """MNIST's idx format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root, n_train=50, n_test=20):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", RNG.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", RNG.integers(0, 10, n))
    return raw


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_cifar(root, cls, monkeypatch, n_per_batch=10):
    """CIFAR python pickles as torchvision writes them; md5 lists patched to the fixture's."""
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = "labels" if cls is CIFAR10 else "fine_labels"
    classes = 10 if cls is CIFAR10 else 100
    for name, _ in cls.train_list + cls.test_list:
        batch = {
            "data": RNG.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            label_key: RNG.integers(0, classes, n_per_batch).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {cls.meta["key"]: [f"class{i}" for i in range(classes)]}
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps(meta))
    monkeypatch.setattr(cls, "train_list", [[n, md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5(folder / n)] for n, _ in cls.test_list])
    monkeypatch.setitem(cls.meta, "md5", md5(folder / cls.meta["filename"]))
    return folder


def test_mnist_idx_files_load(tmp_path):
    raw = make_mnist(tmp_path)
    data = load_raw("mnist", tmp_path)
    assert data["train_x"].shape == (50, 1, 28, 28) and data["train_x"].dtype == torch.uint8
    assert data["test_x"].shape == (20, 1, 28, 28)
    # The bytes we wrote come back in the same order.
    pixels = np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes()[16:], np.uint8)
    assert np.array_equal(data["train_x"].numpy().ravel(), pixels)


@pytest.mark.parametrize("cls,name", [(CIFAR10, "cifar10"), (CIFAR100, "cifar100")])
def test_cifar_pickles_load_and_prepare(tmp_path, monkeypatch, cls, name):
    folder = make_cifar(tmp_path, cls, monkeypatch)
    data = load_raw(name, tmp_path)
    n_train = 10 * len(cls.train_list)
    assert data["train_x"].shape == (n_train, 3, 32, 32)
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values of a 32x32 image: channel-first.
    first = pickle.loads((folder / cls.train_list[0][0]).read_bytes())["data"][0]
    assert np.array_equal(data["train_x"][0].numpy().ravel(), first)

    out = prepare(name, tmp_path, tmp_path / "p.pt", val_fraction=0.1, split_seed=0)
    p = load_prepared(out)
    assert p.num_classes == (10 if cls is CIFAR10 else 100)
    assert len(p.train_y) + len(p.val_y) == n_train and len(p.val_y) == round(0.1 * n_train)
    # The mean/std are the training set's per-channel statistics, in [0, 1] units.
    pixels = data["train_x"].double() / 255
    assert torch.allclose(p.mean.double(), pixels.mean((0, 2, 3)), atol=1e-6)


def test_split_is_fixed_disjoint_and_complete():
    train_a, val_a = split_train_val(1000, 0.1, split_seed=0)
    train_b, val_b = split_train_val(1000, 0.1, split_seed=0)
    assert torch.equal(val_a, val_b) and torch.equal(train_a, train_b)  # same for every run
    assert len(val_a) == 100 and not set(val_a.tolist()) & set(train_a.tolist())
    assert sorted(train_a.tolist() + val_a.tolist()) == list(range(1000))
    _, val_c = split_train_val(1000, 0.1, split_seed=1)
    assert not torch.equal(val_a, val_c)


def test_prepared_split_is_identical_across_prepares(tmp_path):
    make_mnist(tmp_path, n_train=60)
    a = load_prepared(prepare("mnist", tmp_path, tmp_path / "a.pt"))
    b = load_prepared(prepare("mnist", tmp_path, tmp_path / "b.pt"))
    assert torch.equal(a.val_indices, b.val_indices) and torch.equal(a.val_x, b.val_x)
    assert len(a.val_indices) == 6


def test_missing_raw_data_says_what_to_place_where(tmp_path):
    with pytest.raises(
        DataError, match=r"cifar-10-batches-py is missing.*normdrop.data download cifar10"
    ):
        load_raw("cifar10", tmp_path)


def test_corrupt_cifar_batch_is_refused(tmp_path, monkeypatch):
    folder = make_cifar(tmp_path, CIFAR10, monkeypatch)
    (folder / "data_batch_3").write_bytes(b"truncated")
    with pytest.raises(DataError, match=r"cifar10 .* missing files or corrupt.*Delete that folder"):
        load_raw("cifar10", tmp_path)


def test_mnist_archive_with_wrong_checksum_is_refused(tmp_path):
    raw = make_mnist(tmp_path)
    with gzip.open(raw / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"not the real archive")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz fails its md5 checksum"):
        load_raw("mnist", tmp_path)


def test_corrupt_prepared_file_is_refused(tiny_data, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(tiny_data.read_bytes()[: tiny_data.stat().st_size // 2])
    with pytest.raises(DataError, match=r"broken.pt is corrupt or truncated.*prepare"):
        load_prepared(broken)
    with pytest.raises(DataError, match=r"missing.pt is missing"):
        load_prepared(tmp_path / "missing.pt")


def test_normalize_standardises_per_channel(tiny_data):
    p = load_prepared(tiny_data)
    x = normalize(p.train_x, *standardization(p.mean, p.std))
    pixels = p.train_x.double() / 255
    expected = (pixels - p.mean.view(1, -1, 1, 1)) / p.std.view(1, -1, 1, 1)
    assert torch.allclose(x.double(), expected, atol=1e-5)


def test_crop_flip_matches_a_per_image_reference():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = crop_flip(x, g1, pad=2)
    # Same draws, done one image at a time the way torchvision's transforms describe it.
    dy = torch.randint(0, 5, (6, 1, 1), generator=g2)
    dx = torch.randint(0, 5, (6, 1, 1), generator=g2)
    flip = torch.rand(6, 1, 1, generator=g2) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        crop = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        assert torch.equal(out[i], crop.flip(2) if flip[i] else crop)
    assert out.shape == x.shape and out.dtype == torch.uint8


# --------------------------------------------------------------------------- corrupt data
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999])
def test_truncated_prepared_file_is_refused_with_one_line(
    tmp_path, tiny_data, capsys, keep, train_args
):
    data = tiny_data.read_bytes()
    bad = tmp_path / "synthetic.pt"
    bad.write_bytes(data[: int(len(data) * keep)])
    out = tmp_path / "run"
    rc = train_module.main(train_args(bad, out, tmp_path / "run.ckpt"))
    assert rc != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert str(bad) in err[0] and "prepare" in err[0], err
    assert not out.exists() and not (tmp_path / "run.ckpt").exists()
