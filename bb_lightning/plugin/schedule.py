"""The search schedule: warm-up, ramp and fine-tune epochs, and the learning rate of each quantizer parameter group.

This module is the one home of these settings and their defaults; `bb_lightning.plugin.param_groups` asks it for
each group's learning rate when it adds the groups to the optimizer, and the search callback asks it, every
training batch, for the regulariser's multiplier and whether the bit widths may move. Schedulers the user built
for the weights leave the quantizer groups alone, unless they declare `SCHEDULES_QUANTIZER_GROUPS`.

Timeline of a fit with ``max_epochs = E`` (``t`` = epoch + fraction of the epoch done)::

    0 ........ warmup_epochs ........ + ramp_epochs ..................... E - finetune_epochs ....... E
    | no penalty, bit widths fixed |  penalty x (t - warmup) / ramp  |  full penalty  |  widths fixed, fine-tune  |
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from .._validate import epochs, int_at_least, lr_map
from ..errors import BBConfigError
from ..methods.base import RANGE_GROUPS
from .search_defaults import (
    StepBudget, Travel, default_finetune_epochs, derived_lr, derived_range_lr, diagnose, diagnose_ranges,
)

#: Learning rate of each quantizer parameter group unless the user sets one or the search derives one from the run
#: (with Adam; Bayesian Bits spec 3.8: gates and ranges 1e-3; BitPruning spec R2: bitlengths 1e-2).
DEFAULT_GROUP_LRS: dict[str, float] = {"gates": 1e-3, "ranges": 1e-3, "input_ranges": 1e-3, "bits": 1e-2}
#: The groups that keep training in warm-up (ranges follow the data; bit widths wait).
ALWAYS_TRAINED: frozenset[str] = frozenset(RANGE_GROUPS.values())
#: A learning-rate scheduler with this attribute set to True sees and schedules the quantizer groups too (e.g. the
#: reference's ImageNet recipe decays gates and ranges with the weights); other schedulers never see them
#: (`bb_lightning.plugin.param_groups.shield_from_schedulers`).
SCHEDULES_QUANTIZER_GROUPS = "schedules_quantizer_groups"


@dataclass
class SearchSchedule:
    """When the search runs and how fast each quantizer group learns.

    Args:
        warmup_epochs: epochs (may be fractional) at the initial bit widths: no penalty, and every group except
            the ranges has learning rate 0.
        ramp_epochs: epochs over which the regulariser's multiplier rises linearly from 0 to 1.
        finetune_epochs: fix the bit widths for the last N epochs of ``fit`` and fine-tune weights and ranges;
            ``None``: ``round(0.2 * max_epochs)``, resolved when the fit starts (`resolve_finetune`).
        group_lrs: learning rate per quantizer parameter group (``"gates"``, ``"ranges"`` (weights),
            ``"input_ranges"`` (follows ``"ranges"`` unless given), ``"bits"``, ...); a search group or range group
            not given gets one derived from the run's length (`resolve_lr`, `resolve_range_lr`), any other group
            `DEFAULT_GROUP_LRS`.
    """

    warmup_epochs: float = 0.0
    ramp_epochs: float = 0.0
    finetune_epochs: int | None = None
    group_lrs: Mapping[str, float] = field(default_factory=dict)
    #: whether ``finetune_epochs`` follows ``max_epochs`` (it was ``None``)
    finetune_auto: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.warmup_epochs = epochs("warmup_epochs", self.warmup_epochs)
        self.ramp_epochs = epochs("ramp_epochs", self.ramp_epochs)
        self.finetune_auto = self.finetune_epochs is None
        self.finetune_epochs = 0 if self.finetune_auto else int_at_least("finetune_epochs", self.finetune_epochs, 0)
        self.group_lrs = lr_map(
            "group_lrs", dict(self.group_lrs) if isinstance(self.group_lrs, Mapping) else self.group_lrs
        )

    # ----- learning rates -----------------------------------------------------------------------------------
    def lr(self, group: str, method: str = "") -> float:
        """The learning rate of quantizer group ``group``.

        Raises:
            BBConfigError: a group with neither a user-set nor a default learning rate.
        """
        user = self.user_lr(group)
        if user is not None:
            return user
        if group in DEFAULT_GROUP_LRS:
            return DEFAULT_GROUP_LRS[group]
        known = sorted({*DEFAULT_GROUP_LRS, *self.group_lrs})
        raise BBConfigError(
            f"Method `{method}` has a quantizer parameter group {group!r} without a learning rate; pass "
            f"`group_lrs={{{group!r}: ...}}` (known: {known})."
        )

    def user_lr(self, group: str) -> float | None:
        """The learning rate the user set for ``group``, else None; input ranges follow a user-set ``"ranges"``."""
        if group in self.group_lrs:
            return self.group_lrs[group]
        if group == RANGE_GROUPS["input"]:
            return self.group_lrs.get(RANGE_GROUPS["weight"])
        return None

    def resolve_range_lr(self, group: str, scales: list[float], total_steps: float, lr_arg: str) -> float | None:
        """The learning rate of range group ``group`` once its ranges are calibrated (first optimizer step):
        derived from the run's length and their sizes (`derived_range_lr`), or None if the user set one (with a
        warning if it cannot move them far enough in this run)."""
        user = self.user_lr(group)
        if user is not None:
            problem = diagnose_ranges(group, scales, total_steps, user, lr_arg)
            if problem is not None:
                warnings.warn(f"bb_lightning: {problem}", stacklevel=3)
            return None
        rate = derived_range_lr(scales, total_steps, DEFAULT_GROUP_LRS[group])
        if rate != DEFAULT_GROUP_LRS[group]:
            rank_zero_info(
                f"bb_lightning: {group} learning rate {rate:.3g}, derived from the run's length ({total_steps:.0f} "
                f"steps) and the calibrated ranges (median {statistics.median(scales):.3g}; set `{lr_arg}` to "
                "override)."
            )
        return rate

    def resolve_finetune(self, max_epochs: int | None) -> None:
        """Set an automatic (``None``) fine-tuning tail from this fit's ``max_epochs``."""
        if self.finetune_auto:
            self.finetune_epochs = default_finetune_epochs(max_epochs)

    def step_budget(self, trainer: Any) -> StepBudget:
        """This fit's optimizer steps (``trainer.estimated_stepping_batches``) split into the schedule's phases."""
        total = float(trainer.estimated_stepping_batches)
        batches = float(trainer.num_training_batches)
        per_epoch = math.ceil(batches / max(trainer.accumulate_grad_batches, 1)) if math.isfinite(batches) else 0.0
        if not per_epoch and trainer.max_epochs and trainer.max_epochs > 0 and math.isfinite(total):
            per_epoch = total / trainer.max_epochs
        return StepBudget.from_epochs(total, per_epoch, self.warmup_epochs, self.ramp_epochs, self.finetune_epochs or 0)

    def resolve_lr(
        self, group: str, method: str, travel: Travel | None, trainer: Any, optimizer: Any, frozen: bool
    ) -> float:
        """The learning rate of ``group`` for this fit: the user's, else one derived from the run's length for a
        search group with a known ``travel`` (`bb_lightning.plugin.search_defaults`), else `lr`. Warns when the
        search parameters cannot reach a decision at that rate in this run."""
        if travel is None:
            return self.lr(group, method)
        budget = self.step_budget(trainer)
        if group in self.group_lrs:
            rate = self.group_lrs[group]
        else:
            rate = derived_lr(travel, budget)
            rank_zero_info(
                f"bb_lightning: {group} learning rate {rate:.3g}, derived from the run's length "
                f"({budget.search_steps:.0f} search steps; set `{travel.lr_arg}` to override)."
            )
        # a non-adaptive optimizer gets `param_groups.add_groups`' warning; its steps are not ~lr, so no reach check
        problem = None if isinstance(optimizer, torch.optim.SGD) else diagnose(travel, budget, rate)
        if problem is not None and not frozen:
            warnings.warn(f"bb_lightning: {problem}", stacklevel=3)
        return rate

    # ----- timeline -----------------------------------------------------------------------------------------
    def penalty_scale(self, epoch: int, batch_idx: int, num_batches: float) -> float:
        """The regulariser's multiplier: 0 during warm-up, a linear ramp to 1, then 1."""
        if not (self.warmup_epochs or self.ramp_epochs):
            return 1.0
        t = epoch + (batch_idx / num_batches if 0 < num_batches < float("inf") else 0.0)
        if t < self.warmup_epochs:
            return 0.0
        if self.ramp_epochs and t < self.warmup_epochs + self.ramp_epochs:
            return (t - self.warmup_epochs) / self.ramp_epochs
        return 1.0

    def group_lr(self, name: str, group: Mapping[str, Any], warm: bool) -> float:
        """The learning rate quantizer group ``name`` trains at: 0 for the bit widths in warm-up, else its own."""
        if warm and name not in ALWAYS_TRAINED:
            return 0.0
        return float(group.get("initial_lr", self.lr(name)))

    def in_warmup(self, epoch: int, scale: float) -> bool:
        """Whether the bit widths wait (learning rate 0) at this point."""
        return scale == 0.0 and epoch < self.warmup_epochs

    def freeze_now(self, epoch: int, max_epochs: int | None) -> bool:
        """Whether the bit widths are fixed from epoch ``epoch`` on (the fine-tuning tail)."""
        return bool(self.finetune_epochs and max_epochs and epoch >= max_epochs - self.finetune_epochs)

    def check_run(self, max_epochs: int | None) -> None:
        """Refuse a fine-tuning tail without ``max_epochs``; warn if it swallows the whole run."""
        if not self.finetune_epochs:
            return
        if max_epochs is None or max_epochs < 1:
            raise BBConfigError(
                f"`finetune_epochs={self.finetune_epochs}` counts back from `Trainer(max_epochs=...)`, but this "
                f"Trainer has max_epochs={max_epochs} (e.g. training by `max_steps`). Set max_epochs, or "
                "finetune_epochs=0."
            )
        if self.finetune_epochs >= max_epochs:
            warnings.warn(
                f"bb_lightning: finetune_epochs={self.finetune_epochs} >= max_epochs={max_epochs}: the bit widths are "
                "fixed from the first epoch and nothing is searched.",
                stacklevel=3,
            )


__all__ = ["ALWAYS_TRAINED", "DEFAULT_GROUP_LRS", "SCHEDULES_QUANTIZER_GROUPS", "SearchSchedule"]
