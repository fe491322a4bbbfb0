"""``DigitsDataModule``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), fully offline."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from .._validate import fail
from ..errors import BBConfigError


class SplitLoaders:
    """``train/val/test_dataloader`` over ``self.datasets[split]`` (train shuffled); the class provides
    ``batch_size``, ``num_workers`` and ``pin_memory``. Workers persist across epochs."""

    datasets: dict[str, Any]
    batch_size: int
    num_workers: int
    pin_memory: bool = False

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


class DigitsDataModule(SplitLoaders, pl.LightningDataModule):
    """Real handwritten digits shipped with scikit-learn (no download), resized for a timm model.

    Pixels (0..16) are scaled to ``[0, 1]``, normalised with the training split's mean/std, and bilinearly resized
    from 8x8 to ``image_size``. The split is stratified and fixed by ``seed``.

    Args:
        batch_size: samples per batch.
        image_size: output height and width (8 keeps the original resolution).
        channels: 1, or 3 to repeat the grey channel for 3-channel models.
        val_fraction: fraction of the data for validation.
        test_fraction: fraction of the data for testing.
        seed: seed of the split.
        num_workers: DataLoader workers.
    """

    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        image_size: int = 32,
        channels: int = 1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise fail("channels", "1 or 3", channels)
        if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise BBConfigError(
                f"Expected `val_fraction` and `test_fraction` in (0, 1) summing below 1, got {val_fraction}, "
                f"{test_fraction}."
            )
        self.save_hyperparameters()
        self.datasets: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        hp = self.hparams
        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        idx = list(range(len(y)))
        rest, test = train_test_split(idx, test_size=hp.test_fraction, stratify=y, random_state=hp.seed)
        val_share = hp.val_fraction / (1.0 - hp.test_fraction)
        train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=hp.seed)
        mean, std = x[train].mean(), x[train].std()
        x = (x - mean) / std
        if hp.image_size != 8:
            x = F.interpolate(x, size=(hp.image_size, hp.image_size), mode="bilinear", align_corners=False)
        if hp.channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        for name, ids in (("train", train), ("val", val), ("test", test)):
            t = torch.tensor(ids)
            self.datasets[name] = TensorDataset(x[t], y[t])

    @property
    def batch_size(self) -> int:
        return int(self.hparams.batch_size)

    @property
    def num_workers(self) -> int:
        return int(self.hparams.num_workers)
