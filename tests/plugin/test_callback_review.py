"""Regression tests for the interaction of the callback with schedulers, Trainer settings and module layouts."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import PlainMLP, digits, tiny_module, trainer

from bb_lightning import BayesianBits, BBConfigError, CostRegularizerMixin
from bb_lightning.app.module import TimmClassifier
from bb_lightning.plugin.state import get_state

pytestmark = [pytest.mark.lightning_fit, pytest.mark.timeout(300)]

SCHEDULERS = {
    "lambda": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 0.5**e),
    "step": lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5),
    "cosine_past_tmax": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 2),
    "onecycle": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.01, total_steps=50),
    "cyclic": lambda o: torch.optim.lr_scheduler.CyclicLR(o, 1e-4, 1e-2, step_size_up=2),
    "linear": lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, 3),
    "plateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_user_schedulers_leave_quantizer_lrs_alone(tmp_path, name):
    class WithScheduler(TimmClassifier):
        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=1e-3)
            sched = {"scheduler": SCHEDULERS[name](opt), "interval": "step"}
            if name == "plateau":
                sched["monitor"] = "train/loss"
            return {"optimizer": opt, "lr_scheduler": sched}

    model = WithScheduler(model_name="test_resnet", num_classes=10, in_chans=1, input_size=(1, 16, 16))
    t = trainer(tmp_path, [BayesianBits(gate_lr=0.05, range_lr=0.02)], limit_train_batches=5)
    t.fit(model, datamodule=digits())
    lrs = {g.get("bb_lightning", "model"): g["lr"] for g in t.optimizers[0].param_groups}
    assert lrs["gates"] == pytest.approx(0.05) and lrs["ranges"] == lrs["input_ranges"] == pytest.approx(0.02)
    assert len(t.optimizers[0].param_groups) == 4


def test_finetune_epochs_needs_max_epochs(tmp_path):
    t = trainer(tmp_path, [BayesianBits(finetune_epochs=1)], max_epochs=None, max_steps=2)
    with pytest.raises(BBConfigError, match="finetune_epochs=1.*max_epochs=-1"):
        t.fit(tiny_module(), datamodule=digits())


class ExistingWithBB(CostRegularizerMixin, PlainMLP):
    pass


def test_mixin_on_existing_module_is_enough(tmp_path):
    model = ExistingWithBB()
    trainer(tmp_path, [BayesianBits(strength=1.0)], limit_train_batches=2).fit(model, datamodule=digits())
    assert get_state(model).penalty_calls == 2


def test_second_fit_with_other_quantization_settings_is_refused(tmp_path):
    model = tiny_module()
    trainer(tmp_path, [BayesianBits()], limit_train_batches=1).fit(model, datamodule=digits())
    with pytest.raises(BBConfigError, match=r"bits=\[2, 4, 8, 16, 32\] \(this callback: \[2, 4, 8\]\)"):
        trainer(tmp_path, [BayesianBits(bits=(2, 4, 8))], limit_train_batches=1).fit(model, datamodule=digits())


def test_second_fit_uses_the_new_strength_and_lrs(tmp_path):
    model = tiny_module()
    trainer(tmp_path, [BayesianBits(strength=0.01)], limit_train_batches=1).fit(model, datamodule=digits())
    t = trainer(tmp_path, [BayesianBits(strength=0.5, gate_lr=0.1, range_lr=0.2)], limit_train_batches=1)
    with pytest.warns(UserWarning, match="already fixed"):
        t.fit(model, datamodule=digits())
    state = get_state(model)
    assert state.cost.strength == 0.5
    groups = {g.get("bb_lightning"): g for g in t.optimizers[0].param_groups}
    assert groups["ranges"]["lr"] == pytest.approx(0.2)
    # the first fit fixed the gates: they are no longer optimised (no gradient, no state)
    assert all(not p.requires_grad for p in groups["gates"]["params"])


def test_excluded_layers_count_as_float_and_are_exported(tmp_path):
    model = tiny_module()
    cb = BayesianBits(exclude=["layer*"])
    trainer(tmp_path, [cb], limit_train_batches=1).fit(model, datamodule=digits())
    layers = cb.config.layers
    excluded = [n for n in layers if n.startswith("layer")]
    assert excluded and all(not layers[n]["quantized"] for n in excluded)
    # the float layers are in the fp32 baseline and in the BOPs, at 32x32 bits
    macs = sum(layer["macs"] for layer in layers.values())
    assert cb.config.totals["fp32_bops"] == pytest.approx(1024 * macs)
    for n in excluded:  # a float layer also saves the input channels its producer pruned (spec 4.1)
        prod = layers[n]["producer"]
        kept_in = (1.0 if prod is None or layers[prod]["kept_channels"] is None
                   else len(layers[prod]["kept_channels"]) / layers[prod]["weight_shape"][0])
        assert layers[n]["bops"] == pytest.approx(1024 * layers[n]["macs"] * kept_in), n


def test_validate_without_fit_reports_float_inputs(tmp_path):
    model = tiny_module()
    cb = BayesianBits()
    trainer(tmp_path, [cb]).validate(model, datamodule=digits())
    state = get_state(model)
    cfg = state.export()
    assert all(layer["input"] is None for layer in cfg.layers.values())  # never calibrated: inputs stayed float
