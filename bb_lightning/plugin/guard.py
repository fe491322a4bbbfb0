"""``NonFiniteGuard``: stop a fit at a NaN/inf loss or quantizer gradient, naming the first layer at fault.

A callback of its own; the search callback adds one to the Trainer in ``setup`` unless the Trainer already has one
(pass your own ``NonFiniteGuard()`` in ``callbacks`` to place or subclass it).

Two checks: the loss before ``backward``, and the gradients of the quantizer parameters (a few scalars per layer)
before each optimizer step. A NaN/inf gradient anywhere upstream of a quantizer reaches its range and gate gradients,
so the second check stops the run before the optimizer writes NaN into any parameter, even when the loss was finite
(e.g. a non-finite convolution backward). A non-finite quantizer input does too, also where a learned range clips it
to a finite value (the range gradients carry it; `bb_lightning.methods.bit_pruning.kernels`). It is skipped under a
gradient scaler (``"16-mixed"``), which skips such steps by design.

Cost: on CPU both are checked at every step (reading a CPU scalar is no device sync). On accelerators a non-finite
flag is accumulated on the device (no sync) and read only every ``trainer.log_every_n_steps`` steps, when Lightning
syncs its logged metrics anyway; detection can then lag by up to that many steps. Only once something is non-finite
is the model scanned: its gradients, its parameters, then one forward pass of the current batch with hooks that
record the first module (in execution order) whose output is not finite.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from ..errors import NonFiniteError
from .state import get_state, resolve_root


def _first_tensor(batch: Any) -> Tensor | None:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    return None


def _bad_parameters(root: nn.Module) -> list[str]:
    return [name for name, p in root.named_parameters() if not bool(torch.isfinite(p).all())]


@torch.no_grad()
def _first_bad_output(root: nn.Module, x: Tensor) -> str | None:
    """Name of the first module whose output has a NaN/inf when ``root(x)`` runs (``""`` = the root itself)."""
    found: list[str] = []
    names = {id(m): n for n, m in root.named_modules()}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not found and isinstance(output, Tensor) and output.is_floating_point():
            if not bool(torch.isfinite(output).all()):
                found.append(names[id(module)])

    handles = [m.register_forward_hook(hook) for m in root.modules()]
    try:
        root(x)
    except Exception:  # the diagnosis must not hide the original problem
        pass
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def _bad_gradients(root: nn.Module) -> list[str]:
    return [n for n, p in root.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]


def diagnose(root: nn.Module, batch: Any) -> str:
    """Where the first NaN/inf comes from: a parameter, the input batch, or a module's output."""
    bad = _bad_parameters(root)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        return f"parameter `{bad[0]}`{more} is NaN/inf"
    x = _first_tensor(batch)
    if x is None:
        return "every parameter is finite (the batch could not be re-run to find the layer)"
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        return "the input batch contains NaN/inf"
    name = _first_bad_output(root, x)
    if name is None:
        return "every parameter and every layer output is finite on a re-run of the batch (check the loss function)"
    layer = root.get_submodule(name) if name else root
    return f"the output of layer `{name or type(root).__name__}` ({type(layer).__name__}) is the first NaN/inf"


class NonFiniteGuard(pl.Callback):
    """Raise `bb_lightning.NonFiniteError` at the first NaN/inf training loss or quantizer gradient (see the module
    docstring); a model without quantizers gets the loss check only."""

    def __init__(self) -> None:
        super().__init__()
        self._batch: Any = None
        self._flag: Tensor | None = None
        self._grad_flag: Tensor | None = None
        self._params: tuple[Any, list[Tensor]] | None = None  # (state, its quantizer parameters), listed once

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch = batch  # a reference only, for the re-run if the loss turns out non-finite

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        self.check(trainer, pl_module, loss)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.check_gradients(trainer, pl_module)

    @staticmethod
    def _read(trainer: pl.Trainer, flag: Tensor, acc: Tensor | None) -> tuple[bool | None, Tensor | None]:
        """``(is bad, new accumulator)``; ``is bad`` is None when this step does not read (accelerators)."""
        if flag.device.type == "cpu":
            return bool(flag), None
        acc = flag if acc is None else acc | flag
        if (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1):
            return None, acc
        return bool(acc), None

    def check_gradients(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Raise `NonFiniteError` if a quantizer parameter's gradient is NaN/inf (before the optimizer step)."""
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # a GradScaler skips steps with inf gradients by design
        state = get_state(pl_module)
        if state is None:
            return
        if self._params is None or self._params[0] is not state:
            self._params = (state, [p for q in state.quantizers() for p in q.parameters()])
        grads = [p.grad for p in self._params[1] if p.grad is not None]
        if not grads:
            return
        # max |g| is NaN/inf iff an element is (and cannot overflow): one reduction per gradient, no concatenated copy
        flag = ~torch.isfinite(torch.stack(torch._foreach_norm(grads, float("inf")))).all()
        bad, self._grad_flag = self._read(trainer, flag, self._grad_flag)
        if not bad:
            return
        root = resolve_root(pl_module, state.root_attr)
        names = _bad_gradients(root)
        bad_parameter = bool(_bad_parameters(root))
        if bad_parameter or not names:  # a NaN/inf parameter is the cause, not its gradient
            where = diagnose(root, self._batch)
        else:
            where = f"the gradient of `{names[0]}` is the first NaN/inf" + (
                f" ({len(names) - 1} more)" if len(names) > 1 else ""
            )
        raise NonFiniteError(
            f"bb_lightning: a NaN/inf {'parameter' if bad_parameter else 'gradient'} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}): "
            f"{where}. The run was stopped before the optimizer step, so no parameter was overwritten and saved "
            "checkpoints are intact. HINT: clip gradients (`Trainer(gradient_clip_val=...)`), lower the learning "
            "rates, or (under bf16/16-bit mixed precision) check whether the layer's backward overflows."
        )

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        """Raise `NonFiniteError` if ``loss`` (or, on accelerators, any loss since the last read) is NaN/inf."""
        bad, self._flag = self._read(trainer, ~torch.isfinite(loss.detach()).all(), self._flag)
        if not bad:
            return
        state = get_state(pl_module)
        root = resolve_root(pl_module, state.root_attr) if state is not None else pl_module
        where = diagnose(root, self._batch)
        raise NonFiniteError(
            f"bb_lightning: the training loss is {float(loss)} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}): {where}. The run was stopped before the optimizer step, so saved checkpoints "
            "are intact. HINT: lower the learning rate (`gate_lr`, `range_lr` or the model's), clip gradients "
            "(`Trainer(gradient_clip_val=...)`) or check the data."
        )


__all__ = ["NonFiniteGuard", "diagnose"]
