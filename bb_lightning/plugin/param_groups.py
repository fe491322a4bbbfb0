"""Quantizer parameter groups in the user's optimizer, added from callback hooks and persisted by parameter name.

The search and fine-tuning callbacks never touch the user's ``configure_optimizers``: in ``on_fit_start`` (after
Lightning built the optimizers, before it restores their state from a checkpoint; as Lightning's ``BaseFinetuning``
does) they move the quantizer parameters out of the user's groups into groups of their own, tagged
``"bb_lightning"``: own learning rate (from `bb_lightning.plugin.schedule.SearchSchedule`), no weight decay. The
layout (group name and parameter names, in order) is saved in the callback's state and rebuilt exactly on resume, so
the checkpointed optimizer state loads onto the same groups.

A scheduler built in ``configure_optimizers`` knows only the groups that existed then (PyTorch's schedulers keep
per-group lists and refuse extra groups). `shield_from_schedulers` therefore wraps each scheduler in Lightning's
scheduler configs, once, so that it steps on exactly the groups it knows: the quantizer groups keep their own
learning rates (as in the reference's MNIST/CIFAR recipes). A scheduler that declares
``schedules_quantizer_groups = True`` (e.g. the application's ``GroupLambdaLR``) is left as is and schedules them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import BBConfigError
from .schedule import SCHEDULES_QUANTIZER_GROUPS

GROUP_TAG = "bb_lightning"  #: key marking a quantizer group; its value is the group name ("gates", "ranges", ...)

#: ``[{"group": name, "params": [parameter names relative to the LightningModule]}, ...]``
Layout = list[dict[str, Any]]


def layout_of(groups: Mapping[str, list[nn.Parameter]], module: nn.Module) -> Layout:
    """The layout of ``groups`` (name -> parameters) with parameter names from ``module.named_parameters()``."""
    names = {id(p): n for n, p in module.named_parameters(remove_duplicate=False)}
    out: Layout = []
    for group, params in groups.items():
        missing = [p for p in params if id(p) not in names]
        if missing:
            raise BBConfigError(f"bb_lightning: {len(missing)} quantizer parameter(s) of group {group!r} are not "
                                f"parameters of `{type(module).__name__}`.")
        out.append({"group": group, "params": [names[id(p)] for p in params]})
    return out


def resolve_layout(layout: Layout, module: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by group name from a saved layout; errors name the first missing parameter."""
    params = dict(module.named_parameters(remove_duplicate=False))
    out: dict[str, list[nn.Parameter]] = {}
    for entry in layout:
        missing = [n for n in entry["params"] if n not in params]
        if missing:
            raise BBConfigError(
                f"The checkpoint's quantizer group {entry['group']!r} lists parameter `{missing[0]}`, which "
                f"`{type(module).__name__}` does not have; resume with the same model and quantization settings."
            )
        out[entry["group"]] = [params[n] for n in entry["params"]]
    return out


def find_optimizer(optimizers: Iterable[torch.optim.Optimizer], params: list[nn.Parameter], module: nn.Module) -> Any:
    """The optimizer that holds any of ``params`` (the user's optimizer of the model), else the first one."""
    optimizers = list(optimizers)
    if not optimizers:
        raise BBConfigError(
            f"`{type(module).__name__}.configure_optimizers` returned no torch optimizer; the quantizer parameters "
            "(gates, ranges, bitlengths) need one."
        )
    ids = {id(p) for p in params}
    for opt in optimizers:
        if any(id(p) in ids for g in opt.param_groups for p in g["params"]):
            return opt
    return optimizers[0]


def add_groups(
    optimizer: torch.optim.Optimizer, groups: Mapping[str, list[nn.Parameter]], lr: Callable[[str], float]
) -> bool:
    """Move ``groups`` (name -> parameters) into tagged groups of their own: learning rate ``lr(name)``, no weight
    decay. Frozen parameters stay listed, so the layout does not depend on when a checkpoint was taken.

    Returns:
        False (and changes nothing) if the optimizer already has tagged groups (e.g. a second fit).
    """
    if any(g.get(GROUP_TAG) for g in optimizer.param_groups):
        return False
    rates = {name: lr(name) for name in groups}  # every group has a rate before anything moves
    ids = {id(p) for params in groups.values() for p in params}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    if isinstance(optimizer, torch.optim.SGD):
        warnings.warn(
            f"bb_lightning: your optimizer `{type(optimizer).__name__}` is not adaptive; gate and bitlength "
            "gradients differ in scale by orders of magnitude between layers, and only an Adam-type optimizer "
            "moves them at a useful speed (Bayesian Bits spec 2.7, BitPruning spec R2).",
            stacklevel=2,
        )
    for name, params in groups.items():
        rate = rates[name]
        optimizer.add_param_group(
            {"params": list(params), "lr": rate, "initial_lr": rate, "weight_decay": 0.0, GROUP_TAG: name}
        )
    return True


class ShieldedScheduler:
    """A learning-rate scheduler that steps with the quantizer groups hidden from its optimizer; everything else
    (state dict, attributes) is the wrapped scheduler's."""

    def __init__(self, scheduler: Any) -> None:
        self.__dict__["scheduler"] = scheduler

    def step(self, *args: Any, **kwargs: Any) -> Any:
        groups = getattr(getattr(self.scheduler, "optimizer", None), "param_groups", None)
        ours = [g for g in groups if g.get(GROUP_TAG)] if groups is not None else []
        if ours:
            groups[:] = [g for g in groups if not g.get(GROUP_TAG)]
        try:
            return self.scheduler.step(*args, **kwargs)
        finally:
            if ours:
                groups.extend(ours)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["scheduler"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.scheduler, name, value)


def shield_from_schedulers(trainer: Any) -> None:
    """Wrap every scheduler of ``trainer`` that does not schedule the quantizer groups in a `ShieldedScheduler`."""
    for config in getattr(trainer, "lr_scheduler_configs", []):
        sched = config.scheduler
        if not isinstance(sched, ShieldedScheduler) and not getattr(sched, SCHEDULES_QUANTIZER_GROUPS, False):
            config.scheduler = ShieldedScheduler(sched)


def tagged_groups(optimizers: Iterable[torch.optim.Optimizer]) -> list[dict[str, Any]]:
    """Every quantizer group of ``optimizers``."""
    return [g for opt in optimizers for g in opt.param_groups if g.get(GROUP_TAG)]


def drop_frozen_state(optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """Remove gradient and optimizer state of frozen (``requires_grad=False``) quantizer parameters, so optimizers
    skip them; they stay listed in their group."""
    for opt in optimizers:
        for group in opt.param_groups:
            if not group.get(GROUP_TAG):
                continue
            for p in group["params"]:
                if not p.requires_grad:
                    opt.state.pop(p, None)
                    p.grad = None


__all__ = ["GROUP_TAG", "Layout", "ShieldedScheduler", "add_groups", "drop_frozen_state", "find_optimizer", "layout_of",
           "resolve_layout", "shield_from_schedulers", "tagged_groups"]
