"""With default arguments the search moves within a short run; explicit learning rates win and get a warning when
they cannot reach a decision."""

from __future__ import annotations

import statistics
import warnings

import lightning.pytorch as pl
import pytest
import torch

from bb_lightning import BayesianBits, BitPruning
from bb_lightning.plugin.state import get_state
from bb_lightning.plugin.search_defaults import (
    StepBudget,
    bit_pruning_travel,
    derived_lr,
    noise_limited_lr,
    start_within_reach,
)
from bb_lightning.methods.bayesian_bits.hard_concrete import eval_log_alpha_threshold

from helpers import digits, tiny_module, trainer

pytestmark = pytest.mark.lightning_fit


def _gates(model):
    qs = get_state(model).quantizers()
    doubling = torch.cat([q.log_alpha.detach() for q in qs])
    prune = torch.cat([q.prune_log_alpha.detach() for q in qs if q.prune_log_alpha is not None])
    return doubling, prune


def _group_lr(tr, name):
    return next(g["lr"] for g in tr.optimizers[0].param_groups if g.get("bb_lightning") == name)


def test_default_gates_move_to_a_decision_in_a_40_step_run(tmp_path):
    torch.manual_seed(0)
    model, bb = tiny_module(), BayesianBits(mu=0.05)
    tr = trainer(tmp_path, [bb], max_epochs=5, limit_train_batches=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "cannot reach a decision" warning
        warnings.filterwarnings("ignore", ".*(does not have many workers|smaller than the logging).*")
        warnings.filterwarnings("ignore", ".*feed a BatchNorm that is not folded.*")
        tr.fit(model, datamodule=digits())
    assert bb.schedule.finetune_epochs == 1  # round(0.2 * 5): the last epoch trains with fixed gates
    schedule = StepBudget(4 * 8)  # 4 search epochs of 8 steps
    # too short to travel from 6 at the noise-limited LR: the gates start closer to the decision point
    start = start_within_reach(bb.search_travel["gates"], schedule)
    assert bb.search_travel["gates"].start == pytest.approx(start) and start < 1.0
    assert _group_lr(tr, "gates") == pytest.approx(noise_limited_lr(schedule))
    doubling, prune = _gates(model)
    live = doubling[doubling > -6.0]
    assert (live - start).abs().mean() > 0.5 and (prune - start).abs().median() > 0.5  # the gates left their start
    off = (live <= eval_log_alpha_threshold()).sum() + (prune <= eval_log_alpha_threshold()).sum()
    assert off > 0  # and some reached a decision: switched off at evaluation
    bits = {(layer["weight"]["bits"], layer["input"]["bits"] if layer["input"] else None)
            for layer in bb.config.layers.values() if layer["quantized"]}
    assert bb.config.totals["relative_bops"] < 0.0625 and len(bits) > 1  # below w8a8 and not uniform


def test_explicit_gate_lr_wins_and_warns_when_it_cannot_decide(tmp_path):
    model, bb = tiny_module(), BayesianBits(mu=0.05, gate_lr=1e-3, finetune_epochs=0)
    tr = trainer(tmp_path, [bb], max_epochs=2, limit_train_batches=5)
    with pytest.warns(UserWarning, match=r"`gate_lr=0.001` moves a `gates` parameter by at most 0.01 in the 10 "):
        tr.fit(model, datamodule=digits())
    assert _group_lr(tr, "gates") == 1e-3
    doubling, prune = _gates(model)
    assert doubling[doubling > -6.0].min() > 5.9 and prune.min() > 5.9  # nothing moved: w16a16, no pruning


def test_bit_pruning_default_bit_lr_reaches_min_bits(tmp_path):
    torch.manual_seed(0)
    model, bp = tiny_module(), BitPruning(strength=1.0)
    tr = trainer(tmp_path, [bp], max_epochs=5, limit_train_batches=8)
    tr.fit(model, datamodule=digits())
    assert _group_lr(tr, "bits") == pytest.approx(derived_lr(bit_pruning_travel(8.0, 2.0), StepBudget(32)))
    bits = [layer["weight"]["bits"] for layer in bp.config.layers.values() if layer["quantized"]]
    assert min(bits) < 8 and bp.config.totals["relative_bops"] < 0.0625


@pytest.mark.parametrize("fold_bn", ["none", "train"])
def test_pruning_in_front_of_an_unfolded_batchnorm_gets_a_warning(tmp_path, fold_bn):
    cb = BayesianBits(mu=0.01, fold_bn=fold_bn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [cb], limit_train_batches=1).fit(tiny_module(), datamodule=digits())
    hidden = [str(w.message) for w in caught if "feed a BatchNorm that is not folded" in str(w.message)]
    if fold_bn == "none":
        assert len(hidden) == 1
        assert (
            "15 pruned layers" in hidden[0] and "`conv1.0` -> `conv1.1`" in hidden[0] and "fold_bn='train'" in hidden[0]
        )
    else:
        assert hidden == []


def _size(q) -> float:
    """A learned range's magnitude, read from its parameters (Bayesian Bits ``x_max``, BitPruning ``lo``/``hi``)."""
    if hasattr(q, "x_max"):
        return float(q.x_max)
    return float(torch.maximum(q.lo.abs().max(), q.hi.abs().max()))


class _RangeProbe(pl.Callback):
    """Reads the calibrated ranges and the range groups' rates at the first optimizer step (after the search
    callback set them, before the step moves the ranges)."""

    def __init__(self) -> None:
        self.seen: dict = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            qs = get_state(pl_module).quantizers()
            self.seen["scales"] = {role: [_size(q) for q in qs if q.role == role] for role in ("weight", "input")}
            self.seen["lrs"] = {g["bb_lightning"]: (g["lr"], g["initial_lr"])
                                for g in optimizer.param_groups if g.get("bb_lightning")}


def _derived(scales, steps):
    median = statistics.median(scales)
    return max(1e-3, min(median / (0.25 * steps), 0.05 * median))


def test_default_range_lrs_follow_the_run_length_and_the_calibrated_ranges(tmp_path):
    torch.manual_seed(0)
    probe = _RangeProbe()
    tr = trainer(tmp_path, [BayesianBits(mu=0.05), probe], max_epochs=2, limit_train_batches=5)
    tr.fit(tiny_module(), datamodule=digits())
    scales, lrs = probe.seen["scales"], probe.seen["lrs"]
    want_in, want_w = _derived(scales["input"], 10), _derived(scales["weight"], 10)
    assert want_in > 1e-2  # inputs at about 1-5, 10 steps: well above the reference's 1e-3
    assert lrs["input_ranges"] == (pytest.approx(want_in), pytest.approx(want_in))
    assert lrs["ranges"] == (pytest.approx(want_w), pytest.approx(want_w))
    assert lrs["ranges"][0] < lrs["input_ranges"][0]  # each group at its own scale


def test_explicit_range_lr_wins_for_both_range_groups_and_warns_when_too_small(tmp_path):
    probe = _RangeProbe()
    tr = trainer(tmp_path, [BayesianBits(mu=0.05, range_lr=1e-5), probe], max_epochs=1, limit_train_batches=4)
    with pytest.warns(UserWarning, match=r"`range_lr=1e-05` moves a learned `input_ranges` range by at most 4e-05"):
        tr.fit(tiny_module(), datamodule=digits())
    assert probe.seen["lrs"]["input_ranges"][0] == probe.seen["lrs"]["ranges"][0] == pytest.approx(1e-5)


def test_bit_pruning_learned_input_ranges_get_a_derived_rate(tmp_path):
    probe = _RangeProbe()
    tr = trainer(tmp_path, [BitPruning(learn_ranges=True), probe], max_epochs=1, limit_train_batches=4)
    tr.fit(tiny_module(), datamodule=digits())
    want = _derived(probe.seen["scales"]["input"], 4)
    assert want > 1e-2 and probe.seen["lrs"]["input_ranges"][0] == pytest.approx(want)


def test_resume_keeps_the_derived_range_rates(tmp_path):
    """A resumed fit keeps the rates of the checkpoint's optimizer instead of deriving them from moved ranges."""
    torch.manual_seed(0)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = trainer(tmp_path / "a", [BayesianBits(mu=0.05), ckpt], max_epochs=2, limit_train_batches=4,
                    enable_checkpointing=True)
    first.fit(tiny_module(), datamodule=digits())
    rates = {g["bb_lightning"]: g["lr"] for g in first.optimizers[0].param_groups if g.get("bb_lightning")}
    assert rates["input_ranges"] > 1e-2
    probe = _RangeProbe()
    again = trainer(tmp_path / "b", [BayesianBits(mu=0.05), probe], max_epochs=3, limit_train_batches=4)
    again.fit(tiny_module(), datamodule=digits(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    resumed = {g["bb_lightning"]: g["lr"] for g in again.optimizers[0].param_groups if g.get("bb_lightning")}
    assert resumed["input_ranges"] == pytest.approx(rates["input_ranges"])
    assert resumed["ranges"] == pytest.approx(rates["ranges"])
