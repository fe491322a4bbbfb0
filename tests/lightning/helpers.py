"""Small Lightning pieces shared by the Lightning tests."""

from __future__ import annotations

import lightning.pytorch as pl

from bb_lightning.lightning.data import DigitsDataModule
from bb_lightning.lightning.module import TimmClassifier


def tiny_module(**kwargs) -> TimmClassifier:
    args = dict(model_name="test_resnet", num_classes=10, in_chans=1, input_size=(1, 16, 16), lr=1e-3)
    args.update(kwargs)
    return TimmClassifier(**args)


def digits(**kwargs) -> DigitsDataModule:
    args = dict(batch_size=32, image_size=16)
    args.update(kwargs)
    return DigitsDataModule(**args)


def trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    args = dict(
        default_root_dir=str(tmp_path),
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        limit_test_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    args.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **args)
