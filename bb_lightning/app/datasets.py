"""LightningDataModules for the paper's datasets (MNIST, CIFAR-10, ImageNet) with the reference preprocessing.

Preprocessing (Bayesian Bits spec 8.5):

=========  ==========================================================  ==========================================
dataset    train                                                       validation / test
=========  ==========================================================  ==========================================
MNIST      ``ToTensor`` (pixels in [0, 1], no normalisation)           same
CIFAR-10   random crop 32 (padding 4), horizontal flip, normalise      normalise
ImageNet   ``RandomResizedCrop(224)``, horizontal flip, normalise      resize 248, centre crop 224, normalise
=========  ==========================================================  ==========================================

As in the reference, MNIST and CIFAR-10 validate (and test) on the official test split; ImageNet on ``val``.
Nothing is downloaded unless ``download=True``; missing files raise `bb_lightning.BBConfigError` with the expected
layout. ``fake_size > 0`` replaces the data with that many random images of the right size (torchvision
``FakeData``, same transforms): a stand-in for tests and throughput runs, not for results.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import Dataset

from .._validate import int_at_least
from ..errors import BBConfigError
from .data import SplitLoaders

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the reference's CIFAR-10 statistics (spec 8.5)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _ImageDataModule(SplitLoaders, pl.LightningDataModule):
    """Shared loaders; subclasses define ``_transforms``, ``_real(split, transform)`` and ``_check_files``."""

    num_classes: int = 10
    #: torchvision can fetch the files (``download=True``)
    can_download: bool = True
    #: ``(C, H, W)`` of the images ``FakeData`` produces before the transforms.
    fake_image_size: tuple[int, int, int] = (3, 32, 32)

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        num_workers: int,
        download: bool,
        fake_size: int,
        pin_memory: bool,
    ) -> None:
        super().__init__()
        int_at_least("batch_size", batch_size, 1)
        int_at_least("fake_size", fake_size, 0)  # 0 = real data
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size, self.num_workers, self.download = batch_size, num_workers, download
        self.fake_size, self.pin_memory = fake_size, pin_memory
        self.datasets: dict[str, Dataset] = {}

    # ----- subclass hooks --------------------------------------------------------------------------------------
    def _transforms(self, train: bool) -> Callable[[Any], Any]:
        raise NotImplementedError

    def _real(self, train: bool, transform: Callable[[Any], Any], download: bool = False) -> Dataset:
        raise NotImplementedError

    def _missing(self) -> str | None:
        """A description of the expected files if they are missing, else ``None``."""
        raise NotImplementedError

    # ----- LightningDataModule ---------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.fake_size or not self.download or self._missing() is None:
            return
        for train in (True, False):
            self._real(train, self._transforms(train), download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.fake_size:
            from torchvision.datasets import FakeData

            for split, train in (("train", True), ("val", False)):
                n = self.fake_size if train else max(self.fake_size // 2, 1)
                self.datasets[split] = FakeData(n, self.fake_image_size, self.num_classes, self._transforms(train))
            self.datasets["test"] = self.datasets["val"]
            return
        missing = self._missing()
        if missing is not None:
            raise BBConfigError(
                f"{type(self).__name__}: no data in {self.data_dir}. Expected {missing}"
                + (" Set `download: true` to fetch it." if self.can_download and not self.download else "")
            )
        self.datasets["train"] = self._real(True, self._transforms(True))
        self.datasets["val"] = self.datasets["test"] = self._real(False, self._transforms(False))


class MNISTDataModule(_ImageDataModule):
    """MNIST (60 000 / 10 000 handwritten digits, 1x28x28) through ``torchvision.datasets.MNIST``.

    Args:
        data_dir: root folder; the files live in ``<data_dir>/MNIST/raw/``.
        batch_size: samples per batch (reference: 128).
        num_workers: DataLoader workers.
        download: fetch the files if they are missing (needs internet).
        fake_size: ``> 0``: random stand-in images instead of the data (tests, throughput).
        pin_memory: DataLoader ``pin_memory``.
    """

    fake_image_size = (1, 28, 28)
    _FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        download: bool = False,
        fake_size: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, download, fake_size, pin_memory)

    def _transforms(self, train: bool) -> Callable[[Any], Any]:
        from torchvision import transforms as T

        return T.ToTensor()

    def _real(self, train: bool, transform: Callable[[Any], Any], download: bool = False) -> Dataset:
        from torchvision.datasets import MNIST

        return MNIST(str(self.data_dir), train=train, transform=transform, download=download)

    def _missing(self) -> str | None:
        raw = self.data_dir / "MNIST" / "raw"
        if all((raw / f).is_file() for f in self._FILES):
            return None
        return f"the four uncompressed MNIST files {list(self._FILES)} in {raw}/."


class CIFAR10DataModule(_ImageDataModule):
    """CIFAR-10 (50 000 / 10 000 images, 3x32x32) through ``torchvision.datasets.CIFAR10``.

    Args:
        data_dir: root folder; the extracted python version lives in ``<data_dir>/cifar-10-batches-py/``.
        batch_size: samples per batch (reference: 128).
        num_workers: DataLoader workers.
        download: fetch the archive if it is missing (needs internet).
        fake_size: ``> 0``: random stand-in images instead of the data (tests, throughput).
        pin_memory: DataLoader ``pin_memory``.
    """

    fake_image_size = (3, 32, 32)
    _FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        download: bool = False,
        fake_size: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, download, fake_size, pin_memory)

    def _transforms(self, train: bool) -> Callable[[Any], Any]:
        from torchvision import transforms as T

        norm = [T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
        return T.Compose(([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []) + norm)

    def _real(self, train: bool, transform: Callable[[Any], Any], download: bool = False) -> Dataset:
        from torchvision.datasets import CIFAR10

        return CIFAR10(str(self.data_dir), train=train, transform=transform, download=download)

    def _missing(self) -> str | None:
        folder = self.data_dir / "cifar-10-batches-py"
        if all((folder / f).is_file() for f in self._FILES):
            return None
        return f"the extracted 'CIFAR-10 python version' files {list(self._FILES)} in {folder}/."


class ImageNetDataModule(_ImageDataModule):
    """ImageNet (ILSVRC-2012, 1000 classes) from an ``ImageFolder`` layout.

    Args:
        data_dir: root folder with ``train/<class>/<image>`` and ``val/<class>/<image>`` (one folder per class,
            e.g. the WordNet ids ``n01440764``; the same class folders in both).
        batch_size: samples per batch and device (reference: 384 over 4 GPUs, i.e. 96 per GPU).
        num_workers: DataLoader workers.
        image_size: crop size (224).
        resize_size: evaluation resize before the centre crop (reference: 248 = 224 + 24).
        fake_size: ``> 0``: random stand-in images instead of the data (tests, throughput).
        pin_memory: DataLoader ``pin_memory``.
        num_classes: number of classes (the stand-in data's labels; 1000 for ImageNet).
    """

    can_download = False  # ImageNet must be obtained from image-net.org and extracted by hand

    def __init__(
        self,
        data_dir: str = "data/imagenet",
        batch_size: int = 96,
        num_workers: int = 8,
        image_size: int = 224,
        resize_size: int = 248,
        fake_size: int = 0,
        pin_memory: bool = True,
        num_classes: int = 1000,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, False, fake_size, pin_memory)
        self.image_size, self.resize_size, self.num_classes = image_size, resize_size, num_classes
        self.fake_image_size = (3, resize_size, resize_size)

    def _transforms(self, train: bool) -> Callable[[Any], Any]:
        from torchvision import transforms as T

        norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        if train:
            return T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip()] + norm)
        return T.Compose([T.Resize(self.resize_size), T.CenterCrop(self.image_size)] + norm)

    def _real(self, train: bool, transform: Callable[[Any], Any], download: bool = False) -> Dataset:
        from torchvision.datasets import ImageFolder

        return ImageFolder(str(self.data_dir / ("train" if train else "val")), transform=transform)

    def _missing(self) -> str | None:
        layout = f"{self.data_dir}/train/<class>/<image> and {self.data_dir}/val/<class>/<image> (ImageFolder)."
        for split in ("train", "val"):
            folder = self.data_dir / split
            if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
                return layout
        return None


__all__ = ["CIFAR10DataModule", "ImageNetDataModule", "MNISTDataModule"]
