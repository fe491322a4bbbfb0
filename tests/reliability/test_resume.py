"""Exact resume of a search: restored state equals the saved state bit for bit, and the continuation matches an
uninterrupted run bit for bit; test/validate/predict/load_from_checkpoint on search and fine-tuned checkpoints."""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from bb_lightning.plugin.search import QuantizationSearch
from bb_lightning.app.data import DigitsDataModule
from bb_lightning.plugin.state import get_state
from reliability.common import tiny_module, trainer
from reliability.methods import METHODS

pytestmark = pytest.mark.lightning_fit
EPOCHS, STEPS = 3, 3  # 3 epochs of 3 steps; the gates are fixed for the last epoch


class FixedOrderDigits(DigitsDataModule):
    """The digits without shuffling, so a resumed epoch sees the same batches as an uninterrupted one."""

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", False)


class SeedEveryStep(pl.Callback):
    """Seed from the global step, so the gate noise of step k is the same with or without an interruption."""

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        torch.manual_seed(1000 + trainer.global_step)


def snapshot(trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
    """Everything a resumed run must restore: parameters, buffers, optimizer and scheduler state, host caches."""
    state = get_state(module)
    host = {}
    for i, q in enumerate(state.quantizers()):
        host[i] = {k: v for k, v in vars(q).items() if k.startswith("_") and isinstance(v, (bool, int, float))}
        host[i].update(frozen=q.frozen, hard_bits=q.hard_bits())
        mask = q.keep_mask()
        host[i]["keep"] = None if mask is None else mask.tolist()
    cb = next(c for c in trainer.callbacks if isinstance(c, QuantizationSearch))
    return {
        "tensors": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in module.named_parameters()},
        "optimizers": [copy.deepcopy(o.state_dict()) for o in trainer.optimizers],
        "schedulers": [copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs],
        "host": host,
        "frozen": state.frozen,
        "callback": cb.state_dict(),
    }


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _fit(tmp_path, method, callbacks, ckpt_path=None, module=None):
    torch.manual_seed(0)  # same initial weights in every run
    module = module or tiny_module(lr_schedule="cosine")
    cb = METHODS[method](finetune_epochs=1)
    t = trainer(tmp_path, [cb, SeedEveryStep(), *callbacks], max_epochs=EPOCHS, limit_train_batches=STEPS,
                limit_val_batches=1)
    t.fit(module, datamodule=FixedOrderDigits(batch_size=32, image_size=16), ckpt_path=ckpt_path)
    return t, module


class StopAndSave(pl.Callback):
    """Save a checkpoint and a snapshot after each global step in ``steps`` (or at the end of epoch ``epoch``);
    stop after the last one."""

    def __init__(self, path, steps: tuple[int, ...] = (), epoch: int | None = None, stop: bool = True) -> None:
        self.path, self.steps, self.epoch, self.stop = path, steps, epoch, stop
        self.saved: dict[Any, dict] = {}

    def _save(self, trainer, module, key):
        trainer.save_checkpoint(self.path / f"{key}.ckpt")
        self.saved[key] = snapshot(trainer, module)
        if self.stop and len(self.saved) == len(self.steps) + (self.epoch is not None):
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, module, *args):
        if trainer.global_step in self.steps and trainer.global_step not in self.saved:
            self._save(trainer, module, trainer.global_step)

    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == self.epoch and "epoch" not in self.saved:
            self._save(trainer, module, "epoch")


class SnapshotAtStart(pl.Callback):
    def on_train_start(self, trainer, module):
        self.restored = snapshot(trainer, module)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_restores_every_state_bit_for_bit(tmp_path, method):
    steps = (1, 4, 7)  # mid-epoch during the search (1, 4) and after the gates were fixed (7)
    stop = StopAndSave(tmp_path, steps=steps)
    t1, _ = _fit(tmp_path, method, [stop])
    assert t1.global_step == steps[-1] and sorted(stop.saved) == list(steps)
    assert not stop.saved[4]["frozen"] and stop.saved[7]["frozen"]
    for step in steps:
        probe = SnapshotAtStart()
        _fit(tmp_path, method, [probe], ckpt_path=tmp_path / f"{step}.ckpt")
        assert_identical(stop.saved[step], probe.restored, f"step {step}")
    groups = stop.saved[1]["optimizers"][0]["param_groups"]
    assert None in {g.get("bb_lightning") for g in groups} and len(groups) > 1  # model group(s) and quantizer groups


@pytest.mark.parametrize("method", sorted(METHODS))
def test_interrupted_search_continues_bit_identically(tmp_path, method):
    class Final(pl.Callback):
        def on_fit_end(self, trainer, module):
            self.state = snapshot(trainer, module)

    straight = Final()
    _fit(tmp_path / "a", method, [straight])
    stop = StopAndSave(tmp_path, epoch=0)
    _fit(tmp_path / "b", method, [stop])
    resumed = Final()
    t, _ = _fit(tmp_path / "b", method, [resumed], ckpt_path=tmp_path / "epoch.ckpt")
    assert t.global_step == EPOCHS * STEPS
    assert_identical(straight.state, resumed.state, "final")


def _ckpts(tmp_path, method):
    """A checkpoint saved during the search and one saved after the fit (gates fixed, i.e. fine-tuned)."""
    t, module = _fit(tmp_path, method, [StopAndSave(tmp_path, steps=(2,), stop=False)])
    t.save_checkpoint(tmp_path / "finetuned.ckpt")
    assert get_state(module).frozen
    return {"search": tmp_path / "2.ckpt", "finetuned": tmp_path / "finetuned.ckpt"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_evaluate_and_load_search_and_finetuned_checkpoints(tmp_path, method):
    ckpts = _ckpts(tmp_path, method)
    x = torch.randn(8, 1, 16, 16)
    for kind, path in ckpts.items():
        ref = type(tiny_module()).load_from_checkpoint(path)
        state = get_state(ref)
        assert state is not None and state.frozen == (kind == "finetuned"), (kind, state, state and state.frozen)
        sd = torch.load(path, weights_only=False)["state_dict"]
        assert_identical({k: v for k, v in ref.state_dict().items()}, sd, kind)
        ref.eval()
        with torch.no_grad():
            expected = ref(x)
        # into fresh modules: predict without the callback (the mixin re-wraps), test with it, validate without
        module = tiny_module()
        preds = trainer(tmp_path, []).predict(module, DataLoader(x, batch_size=8), ckpt_path=path)
        torch.testing.assert_close(torch.cat(preds), expected, rtol=0, atol=0, msg=kind)
        assert get_state(module).frozen == (kind == "finetuned")
        dm = DigitsDataModule(batch_size=32, image_size=16)
        dm.setup()
        with torch.no_grad():  # the accuracy on the 2 batches the helper's Trainer evaluates
            batches = [b for _, b in zip(range(2), dm.test_dataloader())]
            acc = sum(int((ref(bx).argmax(1) == by).sum()) for bx, by in batches) / sum(len(by) for _, by in batches)
        res = trainer(tmp_path, [METHODS[method]()]).test(tiny_module(), datamodule=dm, ckpt_path=path, verbose=False)
        assert res[0]["test/acc"] == pytest.approx(acc, abs=1e-6), kind
        res = trainer(tmp_path, [], limit_val_batches=2).validate(
            tiny_module(), dataloaders=dm.test_dataloader(), ckpt_path=path, verbose=False
        )
        assert res[0]["val/acc"] == pytest.approx(acc, abs=1e-6), kind


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_fits_in_one_process_do_not_wrap_twice(tmp_path, method):
    module = tiny_module()
    cb = METHODS[method]()
    t = trainer(tmp_path, [cb])
    t.fit(module, datamodule=DigitsDataModule(batch_size=32, image_size=16))
    keys, n_groups = list(module.state_dict()), len(t.optimizers[0].param_groups)
    n_params = sum(1 for _ in module.parameters())
    t2 = trainer(tmp_path, [cb])
    t2.fit(module, datamodule=DigitsDataModule(batch_size=32, image_size=16))
    assert list(module.state_dict()) == keys
    assert sum(1 for _ in module.parameters()) == n_params
    assert len(t2.optimizers[0].param_groups) == n_groups
    ids = [id(p) for g in t2.optimizers[0].param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter is in two optimizer groups"
