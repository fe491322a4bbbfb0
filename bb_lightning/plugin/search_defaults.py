"""Learning rates of the search parameters derived from the run's length (pure functions; no Lightning import).

A search parameter (a Bayesian Bits gate ``log_alpha``, a BitPruning bitlength ``n``) must be able to travel from
its start to the point where the method decides (a gate switches off at ``log_alpha = -0.935``; a bitlength reaches
``min_bits``) well within the *search phase*: the optimizer steps of the fit minus the warm-up, half the ramp and the
fine-tuning tail. Adam-type optimizers move a parameter by about ``lr`` per step when its gradient keeps its sign,
which it does while only the regulariser acts on it (a gate at ``log_alpha = 6`` samples exactly 1 almost always and
gets no task gradient, Bayesian Bits spec 2.7). So the derived learning rate is::

    lr = |start - decision| / (TRAVEL_FRACTION * search_steps)

i.e. the regulariser alone can carry a parameter to its decision in the first ``TRAVEL_FRACTION`` of the search,
leaving the rest for the task loss to push back where bits matter. With the reference's MNIST run (47 000 steps,
gates from 6) this gives 5.9e-4 against the reference's hand-set 1e-3; with a 200-step run 0.14.

Learned clipping ranges have no decision point but the same problem: an input range starts at the first batch's
maximum (1-10 after a ReLU) and at 2-4 bits its useful value is a fraction of that, while Adam moves it by about
``lr`` per step at most (less when its gradient is noisy). At the reference's 1e-3 a 705-step run can move a range of
7 by 0.7 at most, and uniform w2a2 then stays at chance (most activations round to 0). `derived_range_lr` gives each
range group (weights, inputs) a rate at which its median range could travel its own size in the first
``TRAVEL_FRACTION`` of the run, as a gate travels to its decision, never below the reference's rate.

SGD moves a parameter by ``lr * gradient``, and these gradients are tiny and differ by orders of magnitude between
layers, so no single learning rate is right for SGD: the diagnosis asks for an Adam-type optimizer on the quantizer
groups instead (e.g. `bb_lightning.app.optim.SplitOptimizer`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: share of the search phase in which the regulariser alone can carry a parameter to its decision point
TRAVEL_FRACTION = 0.25
#: share of ``max_epochs`` spent fine-tuning with fixed bit widths when ``finetune_epochs=None``
FINETUNE_SHARE = 0.2
#: the largest derived range learning rate, as a share of the group's median range (one Adam step moves a range by
#: about its rate): a 4-step run must not push its ranges to 0 in one step
MAX_RANGE_STEP = 0.05


@dataclass(frozen=True)
class StepBudget:
    """The fit's optimizer steps, split into phases (steps; fractional values allowed)."""

    total_steps: float
    warmup_steps: float = 0.0
    ramp_steps: float = 0.0
    finetune_steps: float = 0.0

    @property
    def search_steps(self) -> float:
        """Steps in which the regulariser moves the search parameters (half of the ramp counts); may be inf."""
        if not math.isfinite(self.total_steps):
            return math.inf
        return max(self.total_steps - self.warmup_steps - 0.5 * self.ramp_steps - self.finetune_steps, 0.0)

    @classmethod
    def from_epochs(
        cls, total_steps: float, steps_per_epoch: float, warmup_epochs: float = 0.0, ramp_epochs: float = 0.0,
        finetune_epochs: float = 0.0,
    ) -> StepBudget:
        """Phases given in epochs of ``steps_per_epoch`` optimizer steps."""
        return cls(
            float(total_steps), warmup_epochs * steps_per_epoch, ramp_epochs * steps_per_epoch,
            finetune_epochs * steps_per_epoch,
        )


@dataclass(frozen=True)
class Travel:
    """How far one group of search parameters must move.

    Args:
        group: optimizer group name (``"gates"``, ``"bits"``).
        start: the parameters' initial value (the farthest one from ``decision``).
        decision: the value at which the method decides (switches a gate off, reaches the lowest bitlength).
        lr_arg: the user's argument that sets this group's learning rate (``"gate_lr"``, ``"bit_lr"``).
        start_arg: the user's argument that sets ``start`` (``"gate_init"``, ``"init_bits"``).
        reference_lr: used when the run's length is unknown (infinite).
    """

    group: str
    start: float
    decision: float
    lr_arg: str
    start_arg: str
    reference_lr: float

    @property
    def distance(self) -> float:
        return abs(self.start - self.decision)


def default_finetune_epochs(max_epochs: int | None) -> int:
    """Fixed-bit-width fine-tuning epochs at the end of a ``max_epochs`` run: ``round(FINETUNE_SHARE * max_epochs)``
    (10 epochs -> 2, 100 -> 20); 0 when the length in epochs is unknown (training by ``max_steps``).

    Stochastic gates (and fractional bitlengths) during the search leave BatchNorm statistics and weights tuned to a
    mixture of networks; the evaluated network is the deterministic one. Without a tail of fixed-width training the
    searched network can lose most of its accuracy (a 200-step digits run: 33% without, 96% with 2 of 10 epochs).
    """
    if max_epochs is None or max_epochs < 1:
        return 0
    return int(math.floor(FINETUNE_SHARE * max_epochs + 0.5))


def derived_lr(travel: Travel, schedule: StepBudget, fraction: float = TRAVEL_FRACTION) -> float:
    """``distance / (fraction * search_steps)``; the reference LR if the length is unknown or nothing must move."""
    steps = schedule.search_steps
    if not math.isfinite(steps) or travel.distance <= 0.0:
        return travel.reference_lr
    return travel.distance / (fraction * max(steps, 1.0))


def derived_range_lr(
    scales: Sequence[float], total_steps: float, reference_lr: float = 1e-3, fraction: float = TRAVEL_FRACTION
) -> float:
    """``max(reference_lr, min(median / (fraction * total_steps), MAX_RANGE_STEP * median))``, with ``median`` the
    median of ``scales``: the learning rate of one group of learned ranges.

    Args:
        scales: the group's calibrated range magnitudes (``max(|lo|, |hi|)``, tensor units).
        total_steps: the fit's optimizer steps (ranges train in every phase, warm-up and fine-tuning included).
        reference_lr: the reference's rate (spec 3.8), kept for runs long enough not to need more (e.g. 10 epochs
            of LeNet-5 on Fashion-MNIST: median input range 0.63 over 4,690 steps gives 5.4e-4, so 1e-3).
        fraction: share of the run in which a range pushed one way all along could cover its own size.

    The cap (5% of the median range per step) binds only for runs under 80 steps.

    Adam steps a noisy range by well under ``lr``, so the margin matters. On ``test_resnet`` (705 steps; median
    ranges 0.34 for weights, 6.7 for inputs, so 1.9e-3 and 0.038) uniform w2a2 gives 66.34 +- 20.97% over seeds
    0-2 (32.43 +- 30.49% at 1e-3; docs/bayesian_bits.md has the rates in between).
    """
    if not scales or not math.isfinite(total_steps) or total_steps <= 0:
        return reference_lr
    median = statistics.median(scales)
    return max(reference_lr, min(median / (fraction * total_steps), MAX_RANGE_STEP * median))


def diagnose_ranges(group: str, scales: Sequence[float], total_steps: float, lr: float, lr_arg: str) -> str | None:
    """Why the ``group`` ranges cannot reach a useful value at an explicit ``lr`` in this run, or None: they can
    move by at most ``lr * total_steps``, less than half their median calibrated size."""
    if not scales or not math.isfinite(total_steps) or total_steps <= 0:
        return None
    size = statistics.median(scales)
    if lr * total_steps >= 0.5 * size:
        return None
    return (
        f"`{lr_arg}={lr:g}` moves a learned `{group}` range by at most {lr * total_steps:.3g} in the "
        f"{total_steps:.0f} optimizer steps of this run, but their median calibrated size is {size:.3g}, and at low "
        f"bit widths they must shrink to a fraction of it. Set `{lr_arg}` >= {size / total_steps:.2g} (about "
        f"{size / (TRAVEL_FRACTION * total_steps):.2g} to get there in the first quarter of the run), or leave it "
        "unset to derive it from the run's length and the ranges, or train longer."
    )


def noise_limited_lr(schedule: StepBudget, fraction: float = TRAVEL_FRACTION, spread: float = 1.0) -> float:
    """The largest LR at which the contested part of the search (after the travel) moves a parameter by about
    ``spread`` as a random walk: ``spread / sqrt((1 - fraction) * search_steps)``; inf for an unknown length.

    Once the task loss acts on a gate its gradient is noisy (sampled gates, mini-batches) and Adam turns noise into
    steps of about ``lr`` in random directions; ``spread = 1`` is the width of the region between the evaluation
    threshold (-0.935) and the irreversible cut-off (-2).
    """
    steps = schedule.search_steps
    if not math.isfinite(steps):
        return math.inf
    return spread / math.sqrt(max((1.0 - fraction) * steps, 1.0))


def start_within_reach(travel: Travel, schedule: StepBudget, fraction: float = TRAVEL_FRACTION) -> float:
    """Where a *defaulted* start should be so that the travel takes ``fraction`` of the search at the noise-limited
    LR: ``travel.start`` for long runs, closer to the decision for short ones (a gate's default start, 6, lies
    deep in the region where samples are exactly 1 and only the regulariser moves it, spec 2.7: skipping part of
    that dead travel changes nothing but the time it takes). E.g. 188 search steps: 3.0; 320: 4.2; >= 766: 6."""
    steps = schedule.search_steps
    reach = fraction * steps * noise_limited_lr(schedule, fraction)
    if not math.isfinite(reach) or travel.distance <= reach:
        return travel.start
    return travel.decision + math.copysign(reach, travel.start - travel.decision)


def diagnose(travel: Travel, schedule: StepBudget, lr: float, adaptive: bool = True) -> str | None:
    """Why the ``travel.group`` parameters cannot reach a decision at ``lr`` in this run (what to change), or None."""
    steps = schedule.search_steps
    if not adaptive:
        return (
            f"the `{travel.group}` parameters are stepped by a non-adaptive optimizer (SGD): their gradients are "
            f"tiny (a gate at log_alpha=6 gets about 5e-4 of the regulariser's gradient) and differ by orders of "
            f"magnitude between layers, so `{travel.lr_arg}` cannot be chosen for them. Step the quantizer groups "
            "with Adam (e.g. `TimmClassifier(optimizer='sgd', quantizer_optimizer='adam')`, which uses "
            "`SplitOptimizer`), or use Adam for the whole model."
        )
    if steps <= 0.0:
        return (
            "the search phase is empty (warm-up and fine-tuning take the whole run): nothing is searched. Shorten "
            "`warmup_epochs` / `finetune_epochs` or train longer."
        )
    if not math.isfinite(steps) or lr * steps >= travel.distance:
        return None
    need = travel.distance / steps
    return (
        f"`{travel.lr_arg}={lr:g}` moves a `{travel.group}` parameter by at most {lr * steps:.3g} in the "
        f"{steps:.0f} search steps of this run, but it must travel {travel.distance:.3g} (from `{travel.start_arg}` "
        f"{travel.start:g} to the decision point {travel.decision:.3g}), so the search cannot decide anything. Set "
        f"`{travel.lr_arg}` >= {need:.2g} (about {need / TRAVEL_FRACTION:.2g} to decide in the first quarter of the "
        f"search), or leave it unset to derive it from the run's length, or move `{travel.start_arg}` closer to "
        f"{travel.decision:.3g}, or train longer."
    )


def bayesian_bits_travel(
    gate_inits: Iterable[float], prune_init: float, prune: bool, gate_cutoff: float, decision: float,
    reference_lr: float = 1e-3,
) -> Travel | None:
    """The gates' travel: from the highest initial ``log_alpha`` of a live gate (above ``gate_cutoff``; pruning gates
    included) down to the evaluation threshold ``decision`` (``-0.935`` for ``P(z = 0) < 0.34``). None if no gate is
    live."""
    starts = [v for v in gate_inits if v > gate_cutoff] + ([prune_init] if prune else [])
    if not starts:
        return None
    start = max(starts, key=lambda v: abs(v - decision))
    return Travel("gates", start, decision, "gate_lr", "gate_init", reference_lr)


def bit_pruning_travel(init_bits: float, min_bits: float, reference_lr: float = 1e-2) -> Travel:
    """The bitlengths' travel: from ``init_bits`` down to ``min_bits``."""
    return Travel("bits", float(init_bits), float(min_bits), "bit_lr", "init_bits", reference_lr)


__all__ = [
    "FINETUNE_SHARE",
    "MAX_RANGE_STEP",
    "TRAVEL_FRACTION",
    "StepBudget",
    "Travel",
    "bayesian_bits_travel",
    "bit_pruning_travel",
    "default_finetune_epochs",
    "noise_limited_lr",
    "start_within_reach",
    "derived_lr",
    "derived_range_lr",
    "diagnose",
    "diagnose_ranges",
]
