"""Small Lightning pieces shared by the Lightning tests."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from bb_lightning.app.data import DigitsDataModule
from bb_lightning.app.module import TimmClassifier


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


class PlainMLP(pl.LightningModule):
    """A user's module written without bb_lightning in mind (no mixin): an MLP on 1x16x16 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(256, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )
        self.example_input_array = torch.zeros(1, 1, 16, 16)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def assert_config_reproduces(model, config, atol: float = 0.0) -> None:
    """A fresh `tiny_module` float model with ``model``'s weights and `apply_config(config)` gives the searched model's
    evaluation outputs (``config``: a `MixedPrecisionConfig` or its path)."""
    from bb_lightning import apply_config

    fresh = tiny_module().model
    fresh.load_state_dict({k: v for k, v in model.model.state_dict().items() if "quantizer" not in k})
    apply_config(fresh, config)
    model.eval()
    fresh.eval()
    x = torch.randn(6, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=atol)
