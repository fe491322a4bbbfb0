"""Soak: 300 search steps on the digits; nothing drifts into NaN, the regulariser decreases, and the gates end in a
valid configuration that `apply_config` reproduces."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bb_lightning import CostRegularizerMixin, MixedPrecisionConfig, apply_config
from bb_lightning.app.data import DigitsDataModule
from bb_lightning.plugin.state import get_state
from reliability.common import trainer
from reliability.methods import METHODS

STEPS = 300


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )


class SmallNet(CostRegularizerMixin, pl.LightningModule):
    """A 4-layer CNN on the native 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _net()
        self.example_input_array = torch.zeros(1, 1, 8, 8)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", (self(batch[0]).argmax(1) == batch[1]).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


class Watch(pl.Callback):
    def __init__(self) -> None:
        self.raw: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.raw.append(float(get_state(module).regularizer.raw()))
        if trainer.global_step % 50 == 0:
            for n, p in module.named_parameters():
                assert torch.isfinite(p).all(), f"{n} non-finite at step {trainer.global_step}"


@pytest.mark.slow
@pytest.mark.lightning_fit
@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_soak_search_on_digits(tmp_path, method):
    torch.manual_seed(0)
    module, watch = SmallNet(), Watch()
    # strengths are on each method's own scale (Bayesian Bits: mu on a sum of per-quantizer terms; BitPruning: a
    # fraction of the float32 cost)
    cb = METHODS[method](strength=1.0 if method.startswith("bit_pruning") else 0.05, gate_lr=3e-2)
    t = trainer(tmp_path, [cb, watch], max_steps=STEPS, max_epochs=None, limit_train_batches=None,
                limit_val_batches=None, val_check_interval=100, check_val_every_n_epoch=None)
    t.fit(module, datamodule=DigitsDataModule(batch_size=32, image_size=8))
    assert t.global_step == STEPS and len(watch.losses) == STEPS
    assert all(map(lambda v: v == v and abs(v) != float("inf"), watch.losses + watch.raw))
    first, last = sum(watch.raw[:20]) / 20, sum(watch.raw[-20:]) / 20
    assert last < 0.8 * first, (first, last)  # the regulariser went down
    assert t.callback_metrics["val/acc"] > 0.8  # while the classifier learned
    # a valid final configuration ...
    cfg = MixedPrecisionConfig.from_dict(cb.config.to_dict())
    assert cfg.totals["relative_bops"] < 0.25
    for name, layer in cfg.layers.items():
        assert layer["quantized"] or name in ("0", "7")
        if layer["quantized"]:
            assert 0 <= layer["weight"]["bits"] <= 32, name
            assert layer["input"] is None or 1 <= layer["input"]["bits"] <= 32, name
    # ... that a fresh float model with the trained weights reproduces exactly
    fixed = _net()
    fixed.load_state_dict(module.model.state_dict(), strict=False)
    apply_config(fixed, cfg)
    module.eval()
    fixed.eval()
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), module(x), rtol=0, atol=1e-6)
