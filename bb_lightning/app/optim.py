"""Optimizers and LR schedules of the paper's recipes (spec 3.8, 5.4) for Lightning's automatic optimization.

* `SplitOptimizer`: one ``torch.optim.Optimizer`` to Lightning that holds two: one for the model weights (e.g. SGD
  with Nesterov momentum) and one for the quantizer groups that a quantization callback adds (gates, ranges; e.g.
  Adam). Groups tagged ``"bb_lightning"`` go to the second. Lightning sees a single optimizer, so automatic
  optimization, gradient clipping, AMP scaling and checkpointing work unchanged.
* `GroupLambdaLR`: ``lr = initial_lr * f(t)`` for every parameter group present at each step, including groups added
  after the scheduler was built, optionally leaving the quantizer groups at their constant LR.
* `LRSchedule`: the multipliers ``f``: constant, cosine to 0, the reference's MNIST/CIFAR "hold then linear decay",
  and multi-step decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .._validate import fail
from ..errors import BBConfigError
from ..plugin.param_groups import GROUP_TAG  # the tag the plugin puts on its quantizer groups
SCHEDULES = ("constant", "cosine", "hold_linear", "multistep")


@dataclass(frozen=True)
class LRSchedule:
    """LR multiplier ``f(t)`` for ``t = 0, 1, ...`` (epochs or optimizer steps) out of ``total``.

    Kinds:
        ``constant``: 1.
        ``cosine``: ``(1 + cos(pi t / total)) / 2``, reaching 0 at ``t = total`` (spec 5.4, per step).
        ``hold_linear``: 1 for ``t <= floor(2 total / 3)``, then ``(total - t) / (total - floor(2 total / 3))``
            (the reference's MNIST/CIFAR ``LambdaLR``, spec 3.8).
        ``multistep``: ``gamma ** (number of milestones <= t)`` (ImageNet: milestones 10, 20 and gamma 0.1).

    >>> tuple(round(LRSchedule("hold_linear", total=6)(t), 3) for t in range(6))
    (1.0, 1.0, 1.0, 1.0, 1.0, 0.5)
    >>> tuple(LRSchedule("multistep", total=30, milestones=(1, 2), gamma=0.5)(t) for t in range(3))
    (1.0, 0.5, 0.25)
    """

    kind: str = "constant"
    total: int = 1
    milestones: Sequence[int] = field(default=())
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise fail("lr_schedule", f"one of {list(SCHEDULES)}", self.kind)

    def __call__(self, t: int) -> float:
        total = max(int(self.total), 1)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
        if self.kind == "hold_linear":
            hold = (2 * total) // 3
            return 1.0 if t <= hold else max(total - t, 0) / (total - hold)
        if self.kind == "multistep":
            return self.gamma ** sum(1 for m in self.milestones if m <= t)
        return 1.0


class GroupLambdaLR(LRScheduler):
    """``group["lr"] = group["initial_lr"] * schedule(t)`` for every current parameter group.

    Args:
        optimizer: any optimizer; groups added later must carry ``initial_lr`` (the quantization callbacks do).
        schedule: the multiplier ``f(t)``.
        schedule_quantizer_groups: also schedule groups tagged ``"bb_lightning"`` (gates, ranges); otherwise they
            keep their LR (the reference's MNIST/CIFAR recipes schedule only the weights).
    """

    def __init__(self, optimizer: Optimizer, schedule: LRSchedule, schedule_quantizer_groups: bool = False) -> None:
        self.schedule = schedule
        #: the plugin's protocol (`bb_lightning.plugin.schedule.SCHEDULES_QUANTIZER_GROUPS`): with True, the search
        #: callback leaves the quantizer groups' learning rates to this scheduler
        self.schedules_quantizer_groups = schedule_quantizer_groups
        super().__init__(optimizer)

    def state_dict(self) -> dict[str, Any]:
        """Plain data only (counters, base LRs): the schedule comes from the constructor, so checkpoints stay
        loadable with ``torch.load(weights_only=True)``."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedule")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in ("optimizer", "schedule")})

    def get_lr(self) -> list[float]:  # type: ignore[override]
        f = self.schedule(self.last_epoch)
        return [
            g.get("initial_lr", g["lr"]) * f if self.schedules_quantizer_groups or not g.get(GROUP_TAG) else g["lr"]
            for g in self.optimizer.param_groups
        ]


class _StateView(MutableMapping):
    """The per-parameter state of several optimizers as one mapping (writes go to the owner of the parameter)."""

    def __init__(self, owner: SplitOptimizer) -> None:
        self._owner = owner

    def _find(self, key: Any) -> Optimizer:
        for opt in self._owner.optimizers:
            if any(p is key for g in opt.param_groups for p in g["params"]):
                return opt
        return self._owner.optimizers[0]

    def __getitem__(self, key: Any) -> Any:
        return self._find(key).state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._find(key).state[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._find(key).state[key]

    def __iter__(self) -> Iterator[Any]:
        for opt in self._owner.optimizers:
            yield from opt.state

    def __len__(self) -> int:
        return sum(len(opt.state) for opt in self._owner.optimizers)


class SplitOptimizer(Optimizer):
    """The model weights' optimizer plus a second optimizer for the quantizer groups, as one optimizer.

    ``param_groups`` lists the groups of both (the same dict objects, so schedulers and the callbacks' LR settings
    reach them); ``add_param_group`` sends groups tagged ``"bb_lightning"`` to the second optimizer, created on first
    use by ``quantizer_factory(groups)``. ``step`` evaluates the closure once, then steps both.

    Args:
        main: the optimizer of the model weights.
        quantizer_factory: ``groups -> Optimizer`` for the quantizer groups, e.g.
            ``lambda groups: torch.optim.Adam(groups)``.
    """

    def __init__(self, main: Optimizer, quantizer_factory: Callable[[list[dict[str, Any]]], Optimizer]) -> None:
        placeholder = torch.zeros(0, requires_grad=True)
        super().__init__([placeholder], dict(main.defaults))  # sets up hooks; groups/state replaced below
        self.optimizers: list[Optimizer] = [main]
        self._factory = quantizer_factory
        self.param_groups = list(main.param_groups)
        self.state = _StateView(self)  # type: ignore[assignment]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "optimizers"):  # called by Optimizer.__init__ for the placeholder
            return super().add_param_group(param_group)
        if param_group.get(GROUP_TAG):
            if len(self.optimizers) == 1:
                self.optimizers.append(self._factory([param_group]))
            else:
                self.optimizers[1].add_param_group(param_group)
            self.param_groups.append(self.optimizers[1].param_groups[-1])
        else:
            self.optimizers[0].add_param_group(param_group)
            self.param_groups.append(self.optimizers[0].param_groups[-1])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"split_optimizer": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        states = state_dict.get("split_optimizer")
        if not isinstance(states, list) or len(states) != len(self.optimizers):
            raise BBConfigError(
                f"This optimizer state holds {len(states) if isinstance(states, list) else 'no'} split optimizer(s); "
                f"the current run has {len(self.optimizers)} (weights, quantizer groups). Resume with the same "
                "optimizer settings and callbacks."
            )
        for opt, s in zip(self.optimizers, states):
            opt.load_state_dict(s)

    def __repr__(self) -> str:
        return f"SplitOptimizer({', '.join(type(o).__name__ for o in self.optimizers)})"


__all__ = ["GroupLambdaLR", "LRSchedule", "SplitOptimizer"]
