"""End-to-end Trainer.fit with BayesianBits + CostRegularizerMixin: export, optimizer groups, resume, reload."""

from __future__ import annotations

import copy
import json

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import PlainMLP, assert_config_reproduces, digits, tiny_module, trainer
from lightning.pytorch.callbacks import ModelCheckpoint

import bb_lightning
from bb_lightning import BayesianBits, CostRegularizerMixin, MixedPrecisionConfig
from bb_lightning.plugin.state import get_state
from bb_lightning.wrap.layers import QuantizedLayer

pytestmark = [pytest.mark.lightning_fit, pytest.mark.timeout(300)]


def _quantizer_params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if "quantizer" in k}


def test_fit_exports_config_and_groups(tmp_path):
    model = tiny_module()
    cb = BayesianBits(strength=0.1, gate_lr=1e-3, export_path=str(tmp_path / "bits.json"))  # explicit LR wins
    t = trainer(tmp_path, [cb], logger=pl.loggers.CSVLogger(tmp_path))
    t.fit(model, datamodule=digits())

    # every conv/linear of the timm model is wrapped; timm keys unchanged
    layers = [m for m in model.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and all(isinstance(m, QuantizedLayer) for m in layers)
    fresh = bb_lightning.app.module.TimmClassifier(**model.hparams)
    assert set(fresh.state_dict()) <= set(model.state_dict())

    # quantizer params in their own groups: no weight decay, own lr, and not duplicated in the user's group
    opt = t.optimizers[0]
    tagged = {g["bb_lightning"]: g for g in opt.param_groups if "bb_lightning" in g}
    assert set(tagged) == {"gates", "ranges", "input_ranges"}  # weight and input ranges differ in scale
    assert tagged["gates"]["weight_decay"] == 0.0 and tagged["gates"]["lr"] == pytest.approx(1e-3)
    n_q = sum(len(g["params"]) for g in tagged.values())
    state = get_state(model)
    assert n_q == sum(len(p) for p in state.parameter_groups().values())
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))

    # exported config: in memory, on disk, loadable, consistent with the model
    assert cb.config is not None and cb.config_path == tmp_path / "bits.json"
    loaded = MixedPrecisionConfig.load(cb.config_path)
    assert loaded.to_dict() == json.loads(json.dumps(cb.config.to_dict()))
    assert set(loaded.layers) == {n for n, m in model.model.named_modules() if isinstance(m, QuantizedLayer)}
    assert 0 < loaded.totals["relative_bops"] <= 1
    # the penalty was logged and the gates are fixed after fit
    assert "bb/penalty_epoch" in t.logged_metrics
    # the final summary reached the logger: totals and per-layer bits / kept channels / BOPs share
    import csv

    t.loggers[0].save()
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    final = [r for r in rows if r.get("bb_final/relative_bops")]
    assert len(final) == 1
    assert float(final[0]["bb_final/relative_bops"]) == pytest.approx(loaded.totals["relative_bops"])
    first = next(iter(loaded.layers))
    assert float(final[0][f"bb_layers/{first}/weight_bits"]) == loaded.layers[first]["weight"]["bits"]
    shares = [float(v) for k, v in final[0].items() if k.endswith("/bops_share")]
    assert len(shares) == len(loaded.layers) and sum(shares) == pytest.approx(1.0)
    assert state.frozen and all(q.frozen for q in state.quantizers())


def test_export_never_overwrites(tmp_path):
    path = tmp_path / "bits.json"
    path.write_text("precious")
    cb = BayesianBits(export_path=str(path))
    trainer(tmp_path, [cb]).fit(tiny_module(), datamodule=digits())
    assert path.read_text() == "precious"
    assert cb.config_path == tmp_path / "bits-v1.json" and cb.config_path.exists()


def _export_random_allocation(model, seed: int) -> MixedPrecisionConfig:
    """Set every gate of a searched model to a random value (mixed bit widths, some pruned channels); export."""
    g = torch.Generator().manual_seed(seed)
    state = get_state(model)
    with torch.no_grad():
        for q in state.quantizers():
            q.log_alpha.copy_(torch.rand(q.log_alpha.shape, generator=g) * 6 - 3)
            if getattr(q, "prune_log_alpha", None) is not None:
                q.prune_log_alpha.copy_(torch.rand(q.prune_log_alpha.shape, generator=g) * 7 - 1)
    return state.export()


def test_apply_config_reproduces_searched_model(tmp_path):
    model = tiny_module()
    cb = BayesianBits(strength=0.1, export_path=str(tmp_path / "bits.json"))
    trainer(tmp_path, [cb]).fit(model, datamodule=digits())
    cfg = _export_random_allocation(model, seed=1)
    assert len({layer["weight"]["bits"] for layer in cfg.layers.values()}) > 1
    assert_config_reproduces(model, cfg, atol=1e-6)


def test_apply_config_data_ranges_trains_allocation_from_scratch(tmp_path):
    """``ranges="data"``: the searched bit widths and masks on fresh weights, ranges calibrated from the first batch."""
    model = tiny_module()
    cb = BayesianBits(strength=0.1)
    trainer(tmp_path, [cb]).fit(model, datamodule=digits())
    cfg = _export_random_allocation(model, seed=2)
    assert any(layer["kept_channels"] is not None for layer in cfg.layers.values())

    fresh = tiny_module()
    x = torch.randn(4, 1, 16, 16)
    bb_lightning.apply_config(fresh.model, cfg, ranges="data")
    fresh.eval()
    layers = dict(fresh.model.named_modules())
    with torch.no_grad():
        # weights calibrate at once, so evaluation before any training already drops the pruned channels
        for name, spec in cfg.layers.items():
            m = layers[name]
            wq, w = m.weight_quantizer, m._bb_adapter.weight(m)
            assert wq.layer_name == name and wq._initialized and wq._signed, name
            assert float(wq.x_max) == pytest.approx(float(w.abs().max()), rel=1e-6), name
            if spec["kept_channels"] is not None:
                dropped = torch.ones(w.shape[0], dtype=torch.bool)
                dropped[spec["kept_channels"]] = False
                assert float(wq(w)[dropped].abs().sum()) == 0.0, name
            if spec["input"] is not None:
                assert not layers[name].input_quantizer._initialized, name  # inputs wait for a training batch
        fresh.train()
        fresh(x)  # the first training batch calibrates the input ranges
    for name, spec in cfg.layers.items():
        wq = layers[name].weight_quantizer
        assert wq.hard_bits() == (spec["weight"]["bits"] if spec["kept_channels"] != [] else 0), name
        if spec["kept_channels"] is not None:
            assert torch.nonzero(wq.keep_mask()).flatten().tolist() == spec["kept_channels"], name
        if spec["input"] is not None:
            iq = layers[name].input_quantizer
            assert iq.hard_bits() == spec["input"]["bits"] and bool(iq.initialized), name
    # the ranges are parameters the user's optimizer trains
    loss = fresh(x).logsumexp(1).mean()
    loss.backward()
    assert all(layers[n].weight_quantizer.x_max.grad is not None for n in cfg.layers)

    bad = copy.deepcopy(cfg.to_dict())
    first = next(iter(bad["layers"]))
    bad["layers"][first]["weight"]["grid"] = "minmax"
    with pytest.raises(bb_lightning.errors.BBConfigError, match=first):
        bb_lightning.apply_config(tiny_module().model, MixedPrecisionConfig.from_dict(bad), ranges="data")
    with pytest.raises(bb_lightning.errors.BBConfigError, match="ranges"):
        bb_lightning.apply_config(tiny_module().model, cfg, ranges="searched")


def test_apply_config_data_ranges_keeps_training_time_bn_folding(tmp_path):
    from bb_lightning.wrap.bn_fold import FoldedBatchNorm

    model = tiny_module()
    cb = BayesianBits(mu=0.1, fold_bn="train")
    trainer(tmp_path, [cb]).fit(model, datamodule=digits())
    folds = cb.config.model["bn_fold"]
    assert folds and {f["mode"] for f in folds.values()} == {"train"}
    # timm starts each block's last BatchNorm at gamma 0, so those folded weights start at 0: still signed grids
    zero_start = [n for n, m in tiny_module().model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                  and not m.weight.any()]
    assert zero_start and {f["bn"] for f in folds.values()} >= set(zero_start)
    assert all(cb.config.layers[n]["weight"]["signed"] for n in cb.config.layers if cb.config.layers[n]["quantized"])
    fresh = tiny_module()
    bb_lightning.apply_config(fresh.model, cb.config, ranges="data")
    modules = dict(fresh.model.named_modules())
    bn_name = next(iter(folds.values()))["bn"]
    bn = modules[bn_name]
    assert not isinstance(bn, FoldedBatchNorm)  # not folded away: its statistics and affine parameters still train
    before = bn.running_mean.clone()
    fresh.train()
    fresh(torch.randn(8, 1, 16, 16)).sum().backward()
    assert not torch.equal(bn.running_mean, before) and bn.weight.grad is not None
    # the default (searched ranges) still folds statically, for evaluation
    static = tiny_module()
    static.model.load_state_dict(model.model.state_dict(), strict=False)
    bb_lightning.apply_config(static.model, cb.config)
    assert isinstance(dict(static.model.named_modules())[bn_name], FoldedBatchNorm)


def test_resume_restores_gates_ranges_and_optimizer(tmp_path):
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=3)
    model = tiny_module()
    t = trainer(tmp_path, [BayesianBits(strength=0.1), ckpt_cb], enable_checkpointing=True, max_epochs=1)
    t.fit(model, datamodule=digits())
    ckpt_path = tmp_path / "ckpt" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    saved = {k: v for k, v in ckpt["state_dict"].items() if "quantizer" in k}
    assert saved and "bb_lightning" in ckpt

    seen = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["params"] = _quantizer_params(pl_module)
            seen["opt_groups"] = len(trainer.optimizers[0].param_groups)
            seen["opt_state"] = copy.deepcopy(trainer.optimizers[0].state_dict())

    resumed = tiny_module()
    t2 = trainer(tmp_path, [BayesianBits(strength=0.1), Probe()], max_epochs=2)
    t2.fit(resumed, datamodule=digits(), ckpt_path=str(ckpt_path))
    for k, v in saved.items():
        assert torch.equal(seen["params"][k], v), f"{k} changed on resume"
    assert seen["opt_groups"] == len(ckpt["optimizer_states"][0]["param_groups"])
    for key, st in ckpt["optimizer_states"][0]["state"].items():
        torch.testing.assert_close(seen["opt_state"]["state"][key]["exp_avg"], st["exp_avg"], rtol=0, atol=0)
    assert t2.global_step > t.global_step


def test_load_from_checkpoint_without_trainer(tmp_path):
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model = tiny_module()
    trainer(tmp_path, [BayesianBits(strength=0.1), ckpt_cb], enable_checkpointing=True).fit(model, datamodule=digits())
    loaded = type(model).load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    # last.ckpt is written during the search (before on_fit_end fixes the gates); eval uses the deterministic rule
    assert get_state(loaded) is not None and not get_state(loaded).frozen
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(3, 1, 16, 16)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_two_fits_do_not_wrap_twice(tmp_path):
    model = tiny_module()
    cb = BayesianBits()
    trainer(tmp_path, [cb]).fit(model, datamodule=digits())
    n_keys = len(model.state_dict())
    trainer(tmp_path, [cb]).fit(model, datamodule=digits())
    assert len(model.state_dict()) == n_keys
    assert not any(isinstance(m.weight_quantizer, QuantizedLayer) for m in get_state(model).modules.values())


def test_finetune_epochs_freeze_gates(tmp_path):
    model = tiny_module()
    frozen_at = {}

    class Probe(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            frozen_at[trainer.current_epoch] = get_state(pl_module).frozen

    cb = BayesianBits(finetune_epochs=1)
    trainer(tmp_path, [cb, Probe()], max_epochs=2, limit_train_batches=1).fit(model, datamodule=digits())
    assert frozen_at == {0: False, 1: True}
    state = get_state(model)
    assert all(not q.log_alpha.requires_grad for q in state.quantizers())
    assert float(state.regularizer()) == 0.0


class DictLoss(CostRegularizerMixin, PlainMLP):
    def __init__(self) -> None:
        super().__init__()
        self.seen_loss = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return {"loss": F.cross_entropy(self.model(x), y), "extra": 1}

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.seen_loss.append(outputs["loss"].detach())


def test_mixin_adds_penalty_to_dict_loss(tmp_path):
    model = DictLoss()
    cb = BayesianBits(strength=1.0)
    trainer(tmp_path, [cb], limit_train_batches=1).fit(model, datamodule=digits())
    state = get_state(model)
    assert state.penalty_calls == 1
    # the loss seen by Lightning includes strength * sum R_k, which is > 1 (a "1" per unpruned quantizer)
    assert float(model.seen_loss[0]) > 1.0


class ManualPenalty(DictLoss):
    auto_quantization_penalty = False
    add_it = True

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        if self.add_it:
            loss = loss + self.quantization_penalty()
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.seen_loss.append(outputs["loss"].detach())


def test_manual_switch(tmp_path):
    model = ManualPenalty()
    trainer(tmp_path, [BayesianBits(strength=1.0)], limit_train_batches=2).fit(model, datamodule=digits())
    assert get_state(model).penalty_calls == 2  # added once per step, by hand, not twice


def test_penalty_never_reaching_loss_stops_at_first_step(tmp_path):
    model = ManualPenalty()
    model.add_it = False
    with pytest.raises(bb_lightning.BBConfigError, match="CostRegularizerMixin"):
        trainer(tmp_path, [BayesianBits(strength=1.0)]).fit(model, datamodule=digits())
    assert get_state(model).penalty_calls == 0


def test_module_without_mixin_errors(tmp_path):
    with pytest.raises(bb_lightning.BBConfigError, match="never reached the loss"):
        trainer(tmp_path, [BayesianBits()]).fit(PlainMLP(), datamodule=digits())


def test_sgd_warns_about_gates(tmp_path):
    model = tiny_module(optimizer="sgd", quantizer_optimizer="same")  # SGD on the gates too
    with pytest.warns(UserWarning, match="not adaptive"):
        trainer(tmp_path, [BayesianBits()], limit_train_batches=1).fit(model, datamodule=digits())
