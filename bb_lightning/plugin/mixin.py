"""``CostRegularizerMixin``: put the quantization regulariser into a LightningModule's training loss.

Where the penalty is added, and why there: Lightning has no hook that may change the loss ``training_step``
returns. ``on_before_backward`` only sees it; overriding ``LightningModule.backward`` would receive the loss already
divided for gradient accumulation and multiplied by the AMP gradient scaler (``"16-mixed"``), and after the
callbacks' ``on_before_backward`` checks, so the penalty would have to be rescaled by hand, would be missing from
the logged loss and from the NaN/inf check. So the mixin wraps the ``training_step`` of each class it is mixed into
(once, when the class is defined) and adds ``quantization_penalty()`` to what it returns: a loss tensor or a dict
with ``"loss"``. Nested calls (a ``training_step`` calling ``super().training_step``) add it once. The only
attribute the mixin and the callbacks add to the module is ``_bb_state`` (`bb_lightning.plugin.state`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from ..errors import BBConfigError
from .state import CHECKPOINT_KEY, QuantizationState, get_state, set_state


def _add_penalty(module: Any, out: Any) -> Any:
    penalty = module.quantization_penalty()
    if isinstance(out, Tensor):
        out = out + penalty
    elif isinstance(out, dict) and "loss" in out:
        out = {**out, "loss": out["loss"] + penalty}
    else:
        raise BBConfigError(
            f"`{type(module).__name__}.training_step` returned {type(out).__name__}; CostRegularizerMixin can add the "
            "quantization penalty only to a loss tensor or a dict with a 'loss' key. HINT: set "
            "`auto_quantization_penalty = False` and add `self.quantization_penalty()` to your loss yourself."
        )
    module.log("bb/penalty", penalty.detach(), on_step=True, on_epoch=True, prog_bar=True)
    return out


def _wrap_training_step(fn: Any) -> Any:
    @functools.wraps(fn)
    def training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = get_state(self)
        if state is None:
            return fn(self, *args, **kwargs)
        state.step_depth += 1
        try:
            out = fn(self, *args, **kwargs)
        finally:
            state.step_depth -= 1
        if (
            state.step_depth == 0
            and out is not None
            and self.auto_quantization_penalty
            and getattr(self, "automatic_optimization", True)
        ):
            out = _add_penalty(self, out)
        return out

    training_step._bb_wrapped = True  # type: ignore[attr-defined]
    return training_step


def check_penalty_reached(pl_module: Any, state: QuantizationState, strength: float) -> None:
    """Raise `BBConfigError` at the first backward if a search with ``strength > 0`` never computed its penalty."""
    if state.penalty_calls or not strength > 0 or state.frozen:
        return
    if isinstance(pl_module, CostRegularizerMixin):
        raise BBConfigError(
            f"The quantization regulariser never reached the loss of `{type(pl_module).__name__}`. It has "
            "CostRegularizerMixin, so either `auto_quantization_penalty` is False (add "
            "`self.quantization_penalty()` to your loss) or training_step returned something the mixin "
            "cannot add to (return a loss tensor or a dict with 'loss')."
        )
    raise BBConfigError(
        f"The quantization regulariser never reached the loss of `{type(pl_module).__name__}`, so the search "
        "would optimise nothing. HINT: add `bb_lightning.CostRegularizerMixin` to your LightningModule "
        "(`class Model(CostRegularizerMixin, LightningModule)`), or add `self.quantization_penalty()` to the "
        "loss your training_step returns."
    )


class CostRegularizerMixin:
    """Mix into a ``LightningModule`` (before it: ``class Model(CostRegularizerMixin, LightningModule)``).

    With a quantization callback (`bb_lightning.BayesianBits`) on the Trainer, adding the mixin is enough:

    * the regulariser is added to the loss your ``training_step`` returns (a tensor or a dict with ``"loss"``) and
      logged as ``bb/penalty`` (see the module docstring for why ``training_step`` and not a hook);
    * ``LightningModule.load_from_checkpoint`` re-creates the quantized layers before the weights load.

    Set the class attribute ``auto_quantization_penalty = False`` to place the penalty yourself:
    ``loss = task_loss + self.quantization_penalty()`` (required with manual optimization). If the penalty never
    reaches the loss, the callback stops training at the first step with an error.
    """

    #: Add `quantization_penalty` to the loss returned by ``training_step`` automatically.
    auto_quantization_penalty: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # wrap the training_step this class will run: its own, or one inherited from an existing LightningModule
        # (`class WithBB(CostRegularizerMixin, MyExistingModule): pass`)
        step = getattr(cls, "training_step", None)
        if step is None or getattr(step, "_bb_wrapped", False):
            return
        import lightning.pytorch as pl

        if step is pl.LightningModule.training_step:
            return
        cls.training_step = _wrap_training_step(step)  # type: ignore[attr-defined]

    def quantization_penalty(self) -> Tensor:
        """The method's regulariser (0-dim tensor, strength and schedule applied); 0 when the model is not
        quantized."""
        state = get_state(self)  # type: ignore[arg-type]
        if state is None:
            return torch.zeros(())
        return state.penalty()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        data = checkpoint.get(CHECKPOINT_KEY)
        if data is not None and get_state(self) is None:  # type: ignore[arg-type]
            set_state(self, QuantizationState.rebuild(self, data))  # type: ignore[arg-type]
        parent = getattr(super(), "on_load_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
