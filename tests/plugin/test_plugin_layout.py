"""The plugin's contracts after the re-layout: one vocabulary for both presets, optimizer groups from hooks and
persisted by name, the guard as its own callback, and no files outside the run's folders."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
from helpers import digits, tiny_module, trainer

from bb_lightning import BayesianBits, BitPruning, NonFiniteGuard, QuantizationSearch
from bb_lightning.plugin.param_groups import GROUP_TAG

pytestmark = [pytest.mark.lightning_fit, pytest.mark.timeout(300)]


def test_presets_share_every_search_argument():
    shared = [p for p in inspect.signature(QuantizationSearch).parameters.values() if p.kind == p.KEYWORD_ONLY]
    assert {p.name for p in shared} >= {"include", "first_layer", "fold_bn", "warmup_epochs", "ramp_epochs",
                                        "finetune_epochs", "group_lrs", "export_path"}
    for preset in (BayesianBits, BitPruning):
        own = inspect.signature(preset).parameters
        assert not {p.name for p in shared} & set(own), f"{preset.__name__} copies a shared argument"
        cb = preset(warmup_epochs=0.5, ramp_epochs=1, finetune_epochs=2, first_layer="full", exclude=["fc"])
        assert (cb.schedule.warmup_epochs, cb.schedule.ramp_epochs, cb.schedule.finetune_epochs) == (0.5, 1.0, 2)
        assert cb.wrap.first_layer.value == "full" and cb.wrap.exclude_patterns == ("fc",)


def test_bayesian_bits_strength_is_the_old_name_of_mu():
    with pytest.warns(FutureWarning, match="mu"):
        cb = BayesianBits(strength=0.3)
    assert cb.cost.strength == BayesianBits(mu=0.3).cost.strength == 0.3


def test_groups_from_hooks_persisted_by_name_and_guard_added(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tiny_module()
    original = type(model).configure_optimizers
    cb = BayesianBits(gate_lr=0.02, range_lr=0.004)
    t = trainer(tmp_path / "run", [cb], limit_train_batches=2)
    t.fit(model, datamodule=digits())
    assert type(model).configure_optimizers is original and "configure_optimizers" not in vars(model)
    assert [k for k in vars(model) if k.startswith("_bb")] == ["_bb_state"]
    assert sum(isinstance(c, NonFiniteGuard) for c in t.callbacks) == 1
    groups = {g[GROUP_TAG]: g for g in t.optimizers[0].param_groups if g.get(GROUP_TAG)}
    assert (groups["gates"]["lr"], groups["ranges"]["lr"]) == (0.02, 0.004)
    layout = cb.state_dict()["param_groups"]
    params = dict(model.named_parameters())
    for entry in layout:
        assert [id(params[n]) for n in entry["params"]] == [id(p) for p in groups[entry["group"]]["params"]]
    # no logger, no export_path: a per-run folder under default_root_dir; the working directory stays empty
    assert cb.config_path == tmp_path / "run" / "bb_lightning" / "version_0" / "mixed_precision_config.json"
    cb2 = BayesianBits()
    trainer(tmp_path / "run", [cb2], limit_train_batches=1).fit(tiny_module(), datamodule=digits())
    assert cb2.config_path.parent.name == "version_1"
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_quantizer_groups_keep_their_lr_under_a_step_scheduler(tmp_path):
    class WithStepLR(type(tiny_module())):
        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=1e-3)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.1)}

    model = WithStepLR(model_name="test_resnet", num_classes=10, in_chans=1, input_size=(1, 16, 16))
    t = trainer(tmp_path, [BitPruning(bit_lr=0.05)], max_epochs=2, limit_train_batches=1)
    t.fit(model, datamodule=digits())
    lrs = {g.get(GROUP_TAG, "model"): g["lr"] for g in t.optimizers[0].param_groups}
    assert lrs["bits"] == pytest.approx(0.05) and lrs["model"] == pytest.approx(1e-5)
