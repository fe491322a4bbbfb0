"""``FashionMNISTDataModule``: Fashion-MNIST (60 000 / 10 000 clothing images, 1x28x28, 10 classes), offline.

The four original IDX files (``train-images-idx3-ubyte`` etc., gzip-compressed or not) are read directly; Debian and
Ubuntu ship them in the package ``dataset-fashion-mnist`` under ``/usr/share/datasets/fashion-mnist/``, the default
``data_dir``. Preprocessing follows the paper's MNIST protocol (Bayesian Bits spec 8.5): pixels scaled to ``[0, 1]``,
no normalisation, no augmentation; validation and test use the official test split unless ``val_size > 0`` holds out
part of the training split.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .. import _validate as v
from ..errors import BBConfigError
from .datasets import _ImageDataModule

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "Install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass `data_dir`."
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (``uint8`` data, optionally gzip-compressed) as an array of its stored shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise BBConfigError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex()!r}).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise BBConfigError(f"{path}: header says shape {shape}, but the file holds {len(data) - offset} bytes.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


class FashionMNISTDataModule(_ImageDataModule):
    """Fashion-MNIST from its IDX files, as ``(N, channels, image_size, image_size)`` float tensors in ``[0, 1]``.

    Args:
        data_dir: folder with the four IDX files (``.gz`` or uncompressed); default: the Debian package's folder.
        batch_size: samples per batch (paper's MNIST protocol: 128).
        num_workers: DataLoader workers (the data is in memory: 0 is usually fastest).
        train_subset: ``> 0``: train on this many training images only (a fixed, class-balanced random subset
            chosen by ``seed``), e.g. for CPU benchmarks; 0 = all 60 000.
        test_subset: ``> 0``: validate/test on this many test images only (fixed by ``seed``); 0 = all 10 000.
        val_size: ``> 0``: hold out this many training images for validation (test stays the test split);
            0 = validate on the test split (the reference's protocol).
        image_size: output height and width (28 keeps the original; others resize bilinearly).
        channels: 1, or 3 to repeat the grey channel for 3-channel models.
        seed: seed of the subsets and the validation split.
        fake_size: ``> 0``: random stand-in images instead of the data (tests, throughput).
        pin_memory: DataLoader ``pin_memory``.

    Raises:
        BBConfigError: the files are missing (the message names the folder and the install command) or invalid.
    """

    can_download = False
    fake_image_size = (1, 28, 28)

    def __init__(
        self,
        data_dir: str = DEFAULT_DIR,
        batch_size: int = 128,
        num_workers: int = 0,
        train_subset: int = 0,
        test_subset: int = 0,
        val_size: int = 0,
        image_size: int = 28,
        channels: int = 1,
        seed: int = 0,
        fake_size: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, False, fake_size, pin_memory)
        train_subset, test_subset, val_size = (
            v.int_at_least(name, value, 0)
            for name, value in (("train_subset", train_subset), ("test_subset", test_subset), ("val_size", val_size))
        )
        if channels not in (1, 3):
            raise v.fail("channels", "1 or 3", channels)
        image_size = v.int_at_least("image_size", image_size, 1)
        self.train_subset, self.test_subset, self.val_size = train_subset, test_subset, val_size
        self.image_size, self.channels, self.seed = image_size, channels, seed
        self.fake_image_size = (channels, image_size, image_size)

    def _transforms(self, train: bool) -> Callable[[Any], Any]:
        from torchvision import transforms as T

        return T.ToTensor()  # only for the ``fake_size`` stand-in images; the real data is converted in `_tensors`

    def _missing(self) -> str | None:
        names = [n for pair in _FILES.values() for n in pair]
        if all(_find(self.data_dir, n) is not None for n in names):
            return None
        return f"the four Fashion-MNIST IDX files {names} (optionally .gz) in {self.data_dir}/. {INSTALL_HINT}"

    def _tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = (read_idx(_find(self.data_dir, n)) for n in _FILES[split])  # type: ignore[arg-type]
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise BBConfigError(
                f"Fashion-MNIST {split} files in {self.data_dir}: {images.shape} images vs {labels.shape} labels."
            )
        x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
        y = torch.from_numpy(labels.astype(np.int64))
        return x, y

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        return x.expand(-1, self.channels, -1, -1).contiguous() if self.channels == 3 else x

    def _balanced(self, y: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` indices, as equal a share of every class as possible, in a fixed random order."""
        perm = torch.randperm(len(y), generator=generator)
        rank = torch.empty_like(perm)
        # rank of each sample within its class in the permuted order: take the lowest ranks first
        sorted_y, order = torch.sort(y[perm], stable=True)
        starts = torch.searchsorted(sorted_y, sorted_y, side="left")
        rank[order] = torch.arange(len(y)) - starts
        return perm[torch.argsort(rank, stable=True)[:n]]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets or self.fake_size:
            super().setup(stage)
            return
        missing = self._missing()
        if missing is not None:
            raise BBConfigError(f"{type(self).__name__}: no data in {self.data_dir}. Expected {missing}")
        g = torch.Generator().manual_seed(self.seed)
        x, y = self._tensors("train")
        idx = torch.randperm(len(y), generator=g)
        if self.val_size:
            if self.val_size >= len(y):
                raise BBConfigError(f"`val_size={self.val_size}` leaves no training images (there are {len(y)}).")
            val_idx, idx = idx[: self.val_size], idx[self.val_size :]
            self.datasets["val"] = TensorDataset(self._resize(x[val_idx]), y[val_idx])
        if self.train_subset:
            idx = idx[self._balanced(y[idx], self.train_subset, g)]
        self.datasets["train"] = TensorDataset(self._resize(x[idx]), y[idx])
        tx, ty = self._tensors("test")
        if self.test_subset:
            keep = self._balanced(ty, self.test_subset, g)
            tx, ty = tx[keep], ty[keep]
        self.datasets["test"] = TensorDataset(self._resize(tx), ty)
        self.datasets.setdefault("val", self.datasets["test"])

    def _real(self, train: bool, transform: Callable[[Any], Any], download: bool = False) -> Dataset:
        raise NotImplementedError  # `setup` builds the splits itself


__all__ = ["FashionMNISTDataModule", "read_idx"]
