"""The paper's optimizer split (SGD weights, Adam gates/ranges) and LR schedules (spec 3.8, 5.4)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import digits, tiny_module, trainer

from bb_lightning import BayesianBits
from bb_lightning.errors import BBConfigError
from bb_lightning.app.optim import GroupLambdaLR, LRSchedule, SplitOptimizer


def test_hold_linear_matches_reference_mnist_and_cifar():
    # spec 3.8: 1-indexed epoch k trains with f(k - 1)
    mnist = LRSchedule("hold_linear", total=100)
    assert all(mnist(k - 1) == 1.0 for k in range(1, 68))
    assert mnist(67) == pytest.approx(33 / 34)
    assert mnist(99) == pytest.approx(1 / 34)  # lr/34 in epoch 100
    cifar = LRSchedule("hold_linear", total=300)
    assert cifar(200) == 1.0 and cifar(201) == pytest.approx(99 / 100)
    assert cifar(299) == pytest.approx(1 / 100)  # lr/100 in epoch 300


def test_multistep_and_cosine():
    ms = LRSchedule("multistep", total=30, milestones=(10, 20), gamma=0.1)
    assert [ms(t) for t in (0, 9, 10, 19, 20, 29)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = LRSchedule("cosine", total=8)
    assert cos(0) == 1.0 and cos(4) == pytest.approx(0.5) and cos(8) == pytest.approx(0.0)
    with pytest.raises(BBConfigError, match="lr_schedule"):
        LRSchedule("step")


def _params():
    torch.manual_seed(0)
    return torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))


def test_split_optimizer_equals_separate_sgd_and_adam():
    w, g = _params()
    w_ref, g_ref = copy.deepcopy(w), copy.deepcopy(g)
    opt = SplitOptimizer(torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True), lambda gr: torch.optim.Adam(gr))
    opt.add_param_group({"params": [g], "lr": 0.01, "bb_lightning": "gates"})
    sgd = torch.optim.SGD([w_ref], lr=0.1, momentum=0.9, nesterov=True)
    adam = torch.optim.Adam([g_ref], lr=0.01)
    assert [type(o) for o in opt.optimizers] == [torch.optim.SGD, torch.optim.Adam]
    assert opt.param_groups[1] is opt.optimizers[1].param_groups[0]
    for _ in range(3):
        for params, opts in (((w, g), (opt,)), ((w_ref, g_ref), (sgd, adam))):
            for o in opts:
                o.zero_grad()
            loss = (params[0] ** 2).sum() + (params[1] ** 3).sum()
            loss.backward()
            for o in opts:
                o.step()
    assert torch.equal(w, w_ref) and torch.equal(g, g_ref)
    assert len(opt.state) == 2 and opt.state[g]["step"] == 3
    state = copy.deepcopy(opt.state_dict())
    w2, g2 = _params()
    opt2 = SplitOptimizer(torch.optim.SGD([w2], lr=0.1, momentum=0.9, nesterov=True), lambda gr: torch.optim.Adam(gr))
    opt2.add_param_group({"params": [g2], "lr": 0.01, "bb_lightning": "gates"})
    opt2.load_state_dict(state)
    assert torch.equal(opt2.state[g2]["exp_avg"], opt.state[g]["exp_avg"])
    with pytest.raises(BBConfigError, match="split optimizer"):
        SplitOptimizer(torch.optim.SGD([w2], lr=0.1), lambda gr: torch.optim.Adam(gr)).load_state_dict(state)


def test_group_lambda_lr_schedules_later_groups_only_if_asked():
    w, g = _params()
    for schedule_q, expected_gate_lr in ((False, 0.01), (True, 0.005)):
        opt = torch.optim.SGD([w], lr=0.1)
        sched = GroupLambdaLR(opt, LRSchedule("multistep", 10, (1,), 0.5), schedule_q)
        opt.add_param_group({"params": [g], "lr": 0.01, "initial_lr": 0.01, "bb_lightning": "gates"})
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
        assert opt.param_groups[1]["lr"] == pytest.approx(expected_gate_lr)


@pytest.mark.lightning_fit
@pytest.mark.parametrize("schedule_q", [False, True])
def test_fit_sgd_weights_adam_gates_and_schedules(tmp_path, schedule_q):
    """With `BayesianBits`, SGD weights get Adam gate/range groups at the callback's LRs; a multistep schedule
    scales the weights, and the gates/ranges only with ``schedule_quantizer_lr`` (ImageNet) - not otherwise."""
    model = tiny_module(
        optimizer="sgd", lr=0.1, lr_schedule="multistep", lr_milestones=[1], lr_gamma=0.5,
        schedule_quantizer_lr=schedule_q,
    )  # fmt: skip
    t = trainer(tmp_path, [BayesianBits(gate_lr=0.02, range_lr=0.004)], max_epochs=2, limit_train_batches=2)
    t.fit(model, datamodule=digits())
    (opt,) = t.optimizers
    assert isinstance(opt, SplitOptimizer) and isinstance(opt.optimizers[1], torch.optim.Adam)
    lrs = {g.get("bb_lightning", "weights"): g["lr"] for g in opt.param_groups}
    f = 0.5 if schedule_q else 1.0  # after 2 epochs the scheduler is at t = 2: one milestone passed
    assert lrs["weights"] == pytest.approx(0.05)
    assert lrs["gates"] == pytest.approx(0.02 * f) and lrs["ranges"] == pytest.approx(0.004 * f)
    assert all(g["weight_decay"] == 0.0 for g in opt.optimizers[1].param_groups)


@pytest.mark.lightning_fit
@pytest.mark.parametrize("schedule_q", [False, True])
def test_derived_range_rates_reach_the_adam_half_and_its_schedule(tmp_path, schedule_q):
    """The range rates the callback derives at the first step land in `SplitOptimizer`'s Adam groups, and a
    scheduler that schedules the quantizer groups scales the derived rate, not the provisional 1e-3."""
    model = tiny_module(
        optimizer="sgd", lr=0.1, lr_schedule="multistep", lr_milestones=[1], lr_gamma=0.5,
        schedule_quantizer_lr=schedule_q,
    )  # fmt: skip
    t = trainer(tmp_path, [BayesianBits(gate_lr=0.02)], max_epochs=2, limit_train_batches=2)
    t.fit(model, datamodule=digits())
    (opt,) = t.optimizers
    adam = {g["bb_lightning"]: g for g in opt.optimizers[1].param_groups if g.get("bb_lightning")}
    f = 0.5 if schedule_q else 1.0
    for name in ("ranges", "input_ranges"):
        assert adam[name]["initial_lr"] > 1e-3  # 4 steps: derived (capped at 5% of the median range per step)
        assert adam[name]["lr"] == pytest.approx(adam[name]["initial_lr"] * f)
    assert adam["input_ranges"]["initial_lr"] > adam["ranges"]["initial_lr"]


@pytest.mark.lightning_fit
def test_resume_restores_split_optimizer_and_schedule(tmp_path):
    """Checkpoints hold plain data only (``torch.load(weights_only=True)``, Lightning's default) and resume the
    Adam state of the gate groups and the schedule position."""
    kwargs = dict(optimizer="sgd", lr_schedule="multistep", lr_milestones=[1], schedule_quantizer_lr=True)
    t = trainer(tmp_path, [BayesianBits(gate_lr=1e-3)], max_epochs=1, limit_train_batches=2)
    t.fit(tiny_module(**kwargs), datamodule=digits())
    t.save_checkpoint(tmp_path / "a.ckpt")
    exp_avg = {k: v["exp_avg"].clone() for k, v in enumerate(t.optimizers[0].optimizers[1].state.values())}
    t2 = trainer(tmp_path, [BayesianBits(gate_lr=1e-3)], max_epochs=2, limit_train_batches=2)
    model = tiny_module(**kwargs)
    t2.fit(model, datamodule=digits(), ckpt_path=tmp_path / "a.ckpt")
    assert t2.global_step == 4 and t2.lr_scheduler_configs[0].scheduler.last_epoch == 2
    assert all(g["lr"] == pytest.approx(1e-4) for g in t2.optimizers[0].param_groups)  # 1e-3 x 0.1, all groups
    assert len(exp_avg) == len(t2.optimizers[0].optimizers[1].state) > 0
