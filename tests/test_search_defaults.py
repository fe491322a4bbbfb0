"""Length-derived search learning rates and fine-tuning tail (`bb_lightning.plugin.search_defaults`, pure functions)."""

from __future__ import annotations

import math

import pytest

from bb_lightning.methods.bayesian_bits.hard_concrete import eval_log_alpha_threshold
from bb_lightning.plugin.search_defaults import (
    TRAVEL_FRACTION,
    StepBudget,
    bayesian_bits_travel,
    bit_pruning_travel,
    default_finetune_epochs,
    derived_lr,
    diagnose,
    noise_limited_lr,
    start_within_reach,
)

DECISION = eval_log_alpha_threshold()  # -0.9353


def gates(inits=(6.0, 6.0, 6.0, -6.0), prune_init=6.0, prune=True):
    return bayesian_bits_travel(inits, prune_init, prune, -2.0, DECISION)


def test_schedule_phases():
    s = StepBudget.from_epochs(1000, 100, warmup_epochs=1, ramp_epochs=2, finetune_epochs=2)
    assert s.search_steps == 1000 - 100 - 100 - 200
    assert StepBudget(100, finetune_steps=150).search_steps == 0
    assert math.isinf(StepBudget(math.inf).search_steps)


@pytest.mark.parametrize("steps", [200, 600, 5_000, 47_000, 300_000])
def test_derived_lr_lets_adam_steps_reach_the_decision_in_a_quarter_of_the_search(steps):
    t = gates()
    schedule = StepBudget(steps)
    lr = derived_lr(t, schedule)
    # Adam moves about lr per step while only the regulariser acts: simulate the walk from the start
    value, n = t.start, 0
    while value > t.decision:
        value -= lr
        n += 1
    assert n == pytest.approx(TRAVEL_FRACTION * steps, abs=1)
    assert diagnose(t, schedule, lr) is None


def test_reference_values():
    assert gates().distance == pytest.approx(6.9353, abs=1e-4)
    assert derived_lr(gates(), StepBudget(47_000)) == pytest.approx(5.9e-4, rel=0.01)  # reference MNIST: 1e-3
    assert derived_lr(gates(), StepBudget(200)) == pytest.approx(0.1387, rel=0.01)
    bits = bit_pruning_travel(8.0, 2.0)
    assert derived_lr(bits, StepBudget(1000, finetune_steps=200)) == pytest.approx(6 / 200)
    # unknown length (max_epochs=-1, max_steps=-1): the reference learning rate
    assert derived_lr(gates(), StepBudget(math.inf)) == 1e-3 and derived_lr(bits, StepBudget(math.inf)) == 1e-2


def test_travel_starts_from_the_farthest_live_gate():
    assert gates(inits=(3.0, 3.0, -6.0), prune_init=6.0).start == 6.0  # the pruning gates start farther
    assert gates(inits=(3.0, 3.0, -6.0), prune=False).start == 3.0  # -6 is cut off: it never travels
    assert gates(inits=(-6.0,), prune=False) is None  # nothing to search


def test_diagnosis_says_what_to_change():
    t = gates()
    msg = diagnose(t, StepBudget(200), 1e-2)  # the old README quickstart: gate_lr=1e-2 for 200 steps
    assert msg is not None
    for part in ("`gate_lr=0.01`", "200 search steps", "6.94", "`gate_lr` >= 0.035", "leave it unset", "gate_init"):
        assert part in msg
    assert diagnose(t, StepBudget(47_000), 1e-3) is None  # the reference's MNIST run reaches a decision
    assert "non-adaptive" in diagnose(t, StepBudget(47_000), 1e-3, adaptive=False)
    assert "search phase is empty" in diagnose(t, StepBudget(10, finetune_steps=10), 1.0)
    bits = diagnose(bit_pruning_travel(8.0, 2.0), StepBudget(100), 1e-2)
    assert "`bit_lr` >= 0.06" in bits and "init_bits" in bits


@pytest.mark.parametrize(("epochs", "tail"), [(None, 0), (-1, 0), (1, 0), (2, 0), (3, 1), (5, 1), (10, 2), (100, 20)])
def test_default_finetune_epochs(epochs, tail):
    assert default_finetune_epochs(epochs) == tail


@pytest.mark.parametrize(("steps", "start"), [(188, 3.02), (320, 4.23), (766, 6.0), (47_000, 6.0)])
def test_short_runs_start_within_reach_at_the_noise_limited_lr(steps, start):
    t, schedule = gates(), StepBudget(steps)
    assert start_within_reach(t, schedule) == pytest.approx(start, abs=0.01)
    lr = derived_lr(type(t)(**{**t.__dict__, "start": start_within_reach(t, schedule)}), schedule)
    assert lr <= noise_limited_lr(schedule) * (1 + 1e-9)
    # the random walk of the contested phase: lr * sqrt(steps left) stays at most 1 (threshold -0.935 to cut-off -2)
    assert lr * math.sqrt((1 - TRAVEL_FRACTION) * steps) <= 1.0 + 1e-9
    assert start_within_reach(t, StepBudget(math.inf)) == 6.0


def test_derived_range_lr_lets_the_median_range_travel_its_size_in_the_run():
    from bb_lightning.plugin.search_defaults import derived_range_lr

    # test_resnet's input ranges at the first step (15 epochs on 6,000 images: 705 steps)
    scales = [3.26, 5.1, 6.75, 7.9, 8.42]
    lr = derived_range_lr(scales, 705)
    assert lr == pytest.approx(6.75 / (0.25 * 705))
    # Adam steps of ~lr cover the median range in the first quarter of the run
    assert lr * 0.25 * 705 == pytest.approx(sorted(scales)[2])
    # long runs and small ranges keep the reference's rate
    assert derived_range_lr([0.63, 0.34, 1.6], 4690) == 1e-3
    assert derived_range_lr([0.46] * 9, 705) == pytest.approx(0.46 / 176.25)
    assert derived_range_lr([0.1] * 9, 705) == 1e-3
    # very short runs: at most 5% of the median range per step, so one Adam step cannot push the ranges to 0
    assert derived_range_lr([4.0, 6.0], 4) == pytest.approx(0.05 * 5.0)
    assert derived_range_lr([4.0, 6.0], 80) == pytest.approx(5.0 / 20)  # where the cap starts to bind
    # nothing calibrated, or no known length: the reference's rate
    assert derived_range_lr([], 705) == 1e-3 and derived_range_lr([5.0], math.inf) == 1e-3


def test_range_diagnosis_names_the_argument_and_the_rate_that_works():
    from bb_lightning.plugin.search_defaults import diagnose_ranges

    msg = diagnose_ranges("input_ranges", [7.0, 6.0, 8.0], 705, 1e-3, "range_lr")
    assert msg is not None
    assert "`range_lr=0.001`" in msg and "0.705" in msg and "median calibrated size is 7" in msg
    assert "range_lr` >= 0.0099 (about 0.04 to get there in the first quarter" in msg
    assert diagnose_ranges("input_ranges", [7.0], 705, 1e-2, "range_lr") is None  # 7.05 >= 3.5
    assert diagnose_ranges("input_ranges", [], 705, 1e-5, "range_lr") is None
