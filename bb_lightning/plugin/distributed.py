"""Which Lightning strategies the quantization callbacks support, and what DDP needs from them.

Supported: a single device and DDP (``"ddp"``, ``"ddp_spawn"``, ``"ddp_fork"``, any ``DDPStrategy``), on one or many
nodes. Rejected up front: strategies that shard or flatten parameters (FSDP, DeepSpeed, ModelParallel): the
quantizers' 0-dim range parameters and ``[K]`` gate parameters get their own optimizer groups and host-side caches,
which sharded/flattened parameters break. See ``docs/distributed.md``.

DDP with ``find_unused_parameters=False`` expects a gradient for every parameter that required one when the model
was wrapped. Gates fixed mid-fit (``finetune_epochs``) stop receiving gradients, so `keep_frozen_gates_in_graph`
keeps them trainable for DDP's sake with an exactly-zero term in the loss, and `drop_frozen_grads` removes their
(zero) gradients before every optimizer step, so no optimizer moves them (Adam would, from its momentum).
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ..errors import BBConfigError
from ..methods.base import RANGE_GROUPS
from .state import QuantizationState

_REJECTED = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


def check_strategy(trainer: pl.Trainer) -> None:
    """Raise `BBConfigError` for a parameter-sharding strategy; warn about ``ddp_spawn``'s main process.

    Raises:
        BBConfigError: FSDP, DeepSpeed or ModelParallel; the message names the strategy and the supported ones.
    """
    strategy = getattr(trainer, "strategy", None)
    if isinstance(strategy, _REJECTED):
        raise BBConfigError(
            f"bb_lightning does not support `{type(strategy).__name__}`: it shards or flattens parameters, and the "
            "quantizers' range and gate parameters need their own optimizer groups and host-side caches. Supported "
            "strategies: a single device, or DDP on one or more nodes (`strategy='ddp'`). The quantizers add a few "
            "scalars per layer, so a model that fits one device for DDP training also fits with quantizers. See "
            "docs/distributed.md."
        )
    if isinstance(strategy, DDPStrategy) and getattr(strategy, "_start_method", "popen") == "spawn":
        rank_zero_warn(
            "bb_lightning: with `ddp_spawn` the search runs in spawned processes; in the launching process the "
            "callback's `config`/`config_path` stay None and the model stays unwrapped (Lightning copies back only "
            "float weights). Read the exported file (`export_path`) or the checkpoint, or use `strategy='ddp'`."
        )
    elif strategy is not None and not isinstance(strategy, (DDPStrategy, SingleDeviceStrategy)):
        rank_zero_warn(
            f"bb_lightning: strategy `{type(strategy).__name__}` is untested; supported are a single device and DDP."
        )


def _is_ddp(trainer: pl.Trainer) -> bool:
    return isinstance(getattr(trainer, "strategy", None), DDPStrategy) and trainer.world_size > 1


def _gate_params(state: QuantizationState) -> list[nn.Parameter]:
    groups = state.parameter_groups()
    return [p for name, params in groups.items() if name not in RANGE_GROUPS.values() for p in params]


def keep_frozen_gates_in_graph(trainer: pl.Trainer, state: QuantizationState) -> None:
    """After ``state.freeze()`` during a DDP fit: keep the fixed gates trainable and in the loss (times 0)."""
    if not _is_ddp(trainer):
        return
    params = [p for p in _gate_params(state) if not p.requires_grad]
    for p in params:
        p.requires_grad_(True)
    state.keepalive = params


def drop_frozen_grads(state: QuantizationState) -> None:
    """Remove the zero gradients of kept-alive gates, so the optimizer skips them (``grad is None``)."""
    for p in state.keepalive:
        p.grad = None


__all__ = ["check_strategy", "drop_frozen_grads", "keep_frozen_gates_in_graph"]
