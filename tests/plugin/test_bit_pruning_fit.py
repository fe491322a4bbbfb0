"""The BitPruning callback through Trainer.fit: groups, schedule, rounding and freezing, export, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_config_reproduces, digits, tiny_module, trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from bb_lightning import BitPruning, MixedPrecisionConfig
from bb_lightning.errors import BBConfigError
from bb_lightning.app.data import DigitsDataModule
from bb_lightning.plugin.state import get_state
from bb_lightning.methods.bit_pruning import BitPruningQuantizer

pytestmark = [pytest.mark.lightning_fit, pytest.mark.timeout(300)]


class OrderedDigits(DigitsDataModule):
    """Digits without shuffling, so two runs see identical batches."""

    def train_dataloader(self):
        return self._loader("train", shuffle=False)


def _bits(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("bitlength")}


def test_fit_learns_bitlengths_and_exports_integers(tmp_path):
    model = tiny_module()
    cb = BitPruning(strength=2.0, weight_granularity="channel", bit_lr=0.3, finetune_epochs=1)
    t = trainer(tmp_path, [cb], max_epochs=2, limit_train_batches=3, limit_val_batches=1)
    t.fit(model, datamodule=digits())
    bits = _bits(model)
    assert bits and all((b <= 8.0).all() for b in bits.values())
    mean = torch.cat([b.reshape(-1) for b in bits.values()]).mean()
    assert mean < 7.8, f"the penalty should lower the bitlengths (mean {mean:.3f})"
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.endswith("bitlength"))
    # the frozen bitlengths left the optimizer (parameters and state)
    groups = {g.get("bb_lightning"): g["params"] for g in t.optimizers[0].param_groups}
    assert groups["bits"] and all(not p.requires_grad and p.grad is None for p in groups["bits"])
    frozen = {id(p) for n, p in model.named_parameters() if n.endswith("bitlength")}
    assert not frozen & {id(p) for p in t.optimizers[0].state}  # no optimizer state left for them
    # export: integer bits by the ceil rule, min-max grids, per-channel widths and ranges
    data = json.loads(cb.config_path.read_text())
    state = get_state(model)
    for name, m in state.modules.items():
        w = data["layers"][name]["weight"]
        assert w["grid"] == "minmax" and w["granularity"] == "channel"
        n = m.weight_quantizer.expected_bits().detach()
        expect = torch.ceil(n - 0.05).clamp(2, 8).long().tolist()
        assert w["channel_bits"] == expect and w["bits"] == max(expect)
        assert len(w["channel_ranges"]) == m.weight.shape[0]
    MixedPrecisionConfig.load(cb.config_path, model=tiny_module().model)


def test_bits_group_has_its_own_lr_and_no_weight_decay(tmp_path):
    model = tiny_module()
    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update({g.get("bb_lightning"): g for g in trainer.optimizers[0].param_groups})

    trainer(tmp_path, [BitPruning(bit_lr=0.05), Probe()], limit_train_batches=1).fit(model, datamodule=digits())
    assert seen["bits"]["lr"] == 0.05 and seen["bits"]["weight_decay"] == 0.0
    assert all(isinstance(p, torch.nn.Parameter) and p.dim() == 0 for p in seen["bits"]["params"])
    assert "ranges" not in seen and "gates" not in seen  # min-max ranges are statistics, not parameters


def test_warmup_keeps_bitlengths_then_ramp_scales_the_penalty(tmp_path):
    model = tiny_module()
    scales = []

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            scales.append((trainer.current_epoch, batch_idx, get_state(pl_module).regularizer.scale))
            if trainer.current_epoch == 0:
                assert all(torch.equal(v, torch.tensor(8.0)) for v in _bits(pl_module).values())

    cb = BitPruning(strength=1.0, bit_lr=0.1, warmup_epochs=1, ramp_epochs=1)
    trainer(tmp_path, [cb, Probe()], max_epochs=3, limit_train_batches=4, limit_val_batches=1).fit(
        model, datamodule=digits(batch_size=16)
    )
    assert [s for e, _, s in scales if e == 0] == [0.0] * 4
    assert [s for e, _, s in scales if e == 1] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert [s for e, _, s in scales if e == 2] == [1.0] * 4
    assert any((b < 8.0).all() for b in _bits(model).values())


def test_apply_config_reproduces_the_searched_model(tmp_path):
    model = tiny_module()
    cb = BitPruning(strength=1.0, bit_lr=0.2, weight_granularity="group", group_size=8, rounding="round")
    trainer(tmp_path, [cb], max_epochs=2, limit_train_batches=4).fit(model, datamodule=digits())
    assert any(b != 8 for layer in cb.config.layers.values() if layer["quantized"]
               for b in layer["weight"]["channel_bits"])
    assert_config_reproduces(model, cb.config_path)


def test_learned_ranges_train_in_their_group_and_the_export_reproduces_the_model(tmp_path):
    model = tiny_module()
    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update({g.get("bb_lightning"): g for g in trainer.optimizers[0].param_groups})

    cb = BitPruning(strength=1.0, learn_ranges=True, range_lr=0.01, init_bits=3.0, finetune_epochs=1)
    trainer(tmp_path, [cb, Probe()], max_epochs=2, limit_train_batches=4).fit(model, datamodule=digits())
    assert seen["ranges"]["lr"] == 0.01 and seen["ranges"]["weight_decay"] == 0.0
    state = get_state(model)
    moved = 0
    for name, m in state.modules.items():
        q = m.weight_quantizer
        lo, hi = torch.aminmax(m._bb_adapter.weight(m).detach())
        moved += int(not torch.equal(torch.stack([lo, hi]), torch.stack([q.lo.detach(), q.hi.detach()])))
        spec = cb.config.layers[name]["weight"]
        assert spec["range"] == pytest.approx([q.lo.item(), q.hi.item()])  # the learned range is what is exported
    assert moved == len(state.modules), "every learned weight range left its min/max"
    assert_config_reproduces(model, cb.config_path)


def test_symmetric_weight_grid_fits_and_exports_symmetric_weights(tmp_path):
    model = tiny_module()
    cb = BitPruning(strength=1.0, learn_ranges=True, weight_grid="symmetric", init_bits=3.5, finetune_epochs=1)
    trainer(tmp_path, [cb], max_epochs=2, limit_train_batches=4).fit(model, datamodule=digits())
    state = get_state(model)
    for name, m in state.modules.items():
        q, spec = m.weight_quantizer, cb.config.layers[name]["weight"]
        assert q.parameter_groups()["ranges"] == [q.hi] and "grid" not in spec  # symmetric: no "grid" key
        assert spec["range"] == pytest.approx([-q.hi.item(), q.hi.item()])
        assert cb.config.layers[name]["input"] is None or cb.config.layers[name]["input"]["grid"] == "minmax"
    assert_config_reproduces(model, cb.config_path)


@pytest.mark.parametrize("budget_mode", ["hinge", "dual"])
def test_resume_mid_search_is_exact(tmp_path, budget_mode):
    def run(root, max_epochs, ckpt_path=None, callbacks=()):
        torch.manual_seed(0)
        model = tiny_module()
        cb = BitPruning(strength=0.5, bit_lr=0.1, target=0.01, budget_mode=budget_mode, weight_granularity="channel")
        t = trainer(root, [cb, *callbacks], max_epochs=max_epochs, limit_train_batches=2, limit_val_batches=1,
                    enable_checkpointing=bool(callbacks))
        t.fit(model, datamodule=OrderedDigits(batch_size=8, image_size=16), ckpt_path=ckpt_path)
        return model, cb, t

    straight, cb_a, _ = run(tmp_path / "a", 2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    run(tmp_path / "b", 1, callbacks=[ckpt])
    resumed, cb_b, _ = run(tmp_path / "c", 2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    if budget_mode == "dual":
        assert torch.equal(get_state(straight).regularizer.state_dict()["dual"],
                           get_state(resumed).regularizer.state_dict()["dual"])
    assert cb_a.config.layers == cb_b.config.layers


def test_bit_pruning_rejects_a_bayesian_bits_model(tmp_path):
    from bb_lightning import BayesianBits

    model = tiny_module()
    trainer(tmp_path, [BayesianBits()], limit_train_batches=1).fit(model, datamodule=digits())
    with pytest.raises(BBConfigError, match="already quantized with `bayesian_bits`"):
        trainer(tmp_path, [BitPruning()], limit_train_batches=1).fit(model, datamodule=digits())


def test_load_from_checkpoint_rebuilds_bit_pruning(tmp_path):
    from bb_lightning.app.module import TimmClassifier

    model = tiny_module()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    t = trainer(tmp_path, [BitPruning(strength=1.0, bit_lr=0.1, finetune_epochs=1), ckpt], max_epochs=2,
                limit_train_batches=3, enable_checkpointing=True)
    t.fit(model, datamodule=digits())
    loaded = TimmClassifier.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    qs = [m for m in loaded.modules() if isinstance(m, BitPruningQuantizer)]
    assert qs and all(q.frozen for q in qs)
    model.eval()
    loaded.eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_resume_in_the_finetune_phase_with_split_optimizer(tmp_path):
    """SGD weights + Adam bitlengths (`SplitOptimizer`); the checkpoint is taken after the bitlengths froze."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)

    def fit(max_epochs, callbacks=(), ckpt_path=None):
        model = tiny_module(optimizer="sgd", lr=0.01)
        cb = BitPruning(strength=1.0, bit_lr=0.3, finetune_epochs=1)
        t = trainer(tmp_path, [cb, *callbacks], max_epochs=max_epochs, limit_train_batches=2, limit_val_batches=1,
                    enable_checkpointing=bool(callbacks))
        t.fit(model, datamodule=digits(batch_size=8), ckpt_path=ckpt_path)
        return model, t

    first, _ = fit(2, [ckpt])
    resumed, t = fit(3, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert t.global_step == 6
    assert all(torch.equal(a, b) for a, b in zip(_bits(first).values(), _bits(resumed).values()))
    assert all(not p.requires_grad for n, p in resumed.named_parameters() if n.endswith("bitlength"))
