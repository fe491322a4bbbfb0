"""``FashionMNISTDataModule``: the real IDX files (a few hundred samples), gzip or not, subsets, missing-data error."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import pytest
import torch

from bb_lightning.errors import BBConfigError
from bb_lightning.app.fashion_mnist import DEFAULT_DIR, FashionMNISTDataModule, read_idx

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _real_dir() -> Path:
    """The Debian package's folder; CI (``BB_REQUIRE_DATASETS=1``, set by .ci/run after installing it) fails
    instead of skipping when it is missing."""
    folder = Path(DEFAULT_DIR)
    if not all((folder / f"{n}.gz").is_file() or (folder / n).is_file() for n in NAMES):
        if os.environ.get("BB_REQUIRE_DATASETS"):
            pytest.fail(f"Fashion-MNIST is not installed in {folder} (apt-get install dataset-fashion-mnist)")
        pytest.skip(f"Fashion-MNIST not installed in {folder} (apt-get install dataset-fashion-mnist)")
    return folder


def write_idx(folder: Path, n_train: int = 20, n_test: int = 10, compress: bool = False) -> None:
    """Tiny Fashion-MNIST: image i has every pixel equal to 10 * i, label i % 10."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28)
            + bytes(b for i in range(n) for b in [10 * i % 256] * 784),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n)),
        }
        for name, data in files.items():
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)


def test_real_files_a_few_hundred_samples():
    dm = FashionMNISTDataModule(data_dir=str(_real_dir()), train_subset=300, test_subset=200, batch_size=50)
    dm.setup("fit")
    x, y = dm.datasets["train"].tensors
    assert x.shape == (300, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 == x.min() and x.max() == 1.0  # ToTensor scaling, no normalisation (paper's MNIST protocol)
    assert torch.bincount(y, minlength=10).tolist() == [30] * 10  # class-balanced subset
    tx, ty = dm.datasets["test"].tensors
    assert tx.shape == (200, 1, 28, 28) and torch.bincount(ty).tolist() == [20] * 10
    assert dm.datasets["val"] is dm.datasets["test"]
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (50, 1, 28, 28) and yb.shape == (50,)
    again = FashionMNISTDataModule(data_dir=str(_real_dir()), train_subset=300, test_subset=200)
    again.setup("fit")
    assert torch.equal(again.datasets["train"].tensors[1], y)  # the subset is fixed by the seed
    # the real label file: 6000 training images of each class
    labels = read_idx(next(p for p in _real_dir().iterdir() if p.name.startswith("train-labels")))
    assert labels.shape == (60000,) and torch.bincount(torch.from_numpy(labels.astype("int64"))).tolist() == [6000] * 10


@pytest.mark.parametrize("compress", [False, True])
def test_reads_gzip_or_plain_idx(tmp_path, compress):
    write_idx(tmp_path, compress=compress)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=5, channels=3, image_size=32)
    dm.setup("fit")
    x, y = dm.datasets["train"].tensors
    assert x.shape == (15, 3, 32, 32) and len(dm.datasets["val"]) == 5 and len(dm.datasets["test"]) == 10
    t, ty = dm.datasets["test"].tensors
    assert ty.tolist() == [i % 10 for i in range(10)]
    assert torch.allclose(t[:, 0, 5, 5], torch.arange(10) * 10 / 255.0)
    merged = sorted(dm.datasets["train"].tensors[1].tolist() + dm.datasets["val"].tensors[1].tolist())
    assert merged == sorted(i % 10 for i in range(20))  # train and val partition the training split


def test_missing_data_names_folder_and_install_command(tmp_path):
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "nothing"))
    dm.prepare_data()
    with pytest.raises(BBConfigError, match="apt-get install dataset-fashion-mnist") as err:
        dm.setup("fit")
    assert str(tmp_path / "nothing") in str(err.value) and "t10k-labels-idx1-ubyte" in str(err.value)


def test_bad_arguments_and_bad_file(tmp_path):
    with pytest.raises(BBConfigError, match="train_subset"):
        FashionMNISTDataModule(train_subset=-1)
    with pytest.raises(BBConfigError, match="channels"):
        FashionMNISTDataModule(channels=2)
    write_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(BBConfigError, match="t10k-labels-idx1-ubyte"):
        FashionMNISTDataModule(data_dir=str(tmp_path)).setup("fit")
