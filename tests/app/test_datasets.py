"""The paper's datamodules: file formats, preprocessing of spec 8.5, missing-data errors (no download)."""

from __future__ import annotations

import struct

import pytest
import torch
from PIL import Image

from bb_lightning.errors import BBConfigError
from bb_lightning.app.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CIFAR10DataModule,
    ImageNetDataModule,
    MNISTDataModule,
)


def write_mnist(root, n_train=6, n_test=4):
    """Tiny MNIST in torchvision's raw IDX layout: image i has every pixel equal to 40 * i, label i % 10."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = bytes(b for i in range(n) for b in [40 * i % 256] * 784)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + pixels)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n)))


def test_mnist_reads_torchvision_files_without_normalisation(tmp_path):
    write_mnist(tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), batch_size=6)
    dm.prepare_data()  # download=False: nothing happens
    dm.setup("fit")
    x, y = next(iter(torch.utils.data.DataLoader(dm.datasets["train"], batch_size=6)))
    assert x.shape == (6, 1, 28, 28) and y.tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([0, 40, 80, 120, 160, 200]) / 255.0)  # ToTensor only
    assert len(dm.datasets["val"]) == 4 and dm.datasets["val"] is dm.datasets["test"]  # the test split


@pytest.mark.parametrize(
    ("cls", "expected"),
    [(MNISTDataModule, "MNIST/raw"), (CIFAR10DataModule, "cifar-10-batches-py"), (ImageNetDataModule, "val/<class>")],
)
def test_missing_data_names_the_layout(tmp_path, cls, expected):
    dm = cls(data_dir=str(tmp_path / "nothing"))
    dm.prepare_data()  # never downloads unless asked
    with pytest.raises(BBConfigError, match=expected) as err:
        dm.setup("fit")
    assert str(tmp_path / "nothing") in str(err.value)
    assert ("download: true" in str(err.value)) == (cls is not ImageNetDataModule)


def test_cifar_transforms_follow_the_reference():
    dm = CIFAR10DataModule(fake_size=4, batch_size=4)
    img = Image.new("RGB", (32, 32), (255, 128, 0))
    out = dm._transforms(False)(img)
    expected = [(v / 255.0 - m) / s for v, m, s in zip((255, 128, 0), CIFAR10_MEAN, CIFAR10_STD)]
    assert torch.allclose(out[:, 5, 5], torch.tensor(expected), atol=1e-6)
    names = [type(t).__name__ for t in dm._transforms(True).transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert dm._transforms(True).transforms[0].padding == 4
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.long


def test_imagenet_imagefolder_and_transforms(tmp_path):
    for split in ("train", "val"):
        for cls, color in (("n01", (255, 0, 0)), ("n02", (0, 0, 255))):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (50, 40), color).save(tmp_path / split / cls / "a.png")
    dm = ImageNetDataModule(data_dir=str(tmp_path), batch_size=2, num_workers=0, image_size=24, resize_size=28,
                            pin_memory=False)  # fmt: skip
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 24, 24) and y.tolist() == [0, 1]
    red = [(1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1]]
    assert torch.allclose(x[0, :2, 3, 3], torch.tensor(red), atol=1e-5)
    default = ImageNetDataModule()
    names = [(type(t).__name__, getattr(t, "size", None)) for t in default._transforms(False).transforms[:2]]
    assert names == [("Resize", 248), ("CenterCrop", (224, 224))]
    assert type(default._transforms(True).transforms[0]).__name__ == "RandomResizedCrop"


def test_bad_arguments():
    with pytest.raises(BBConfigError, match="batch_size"):
        MNISTDataModule(batch_size=0)
    with pytest.raises(BBConfigError, match="fake_size"):
        CIFAR10DataModule(fake_size=-1)
