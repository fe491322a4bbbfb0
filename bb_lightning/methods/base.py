"""The two interfaces every quantization method implements; the shared machinery calls nothing else.

* `QuantizerBase`: attached either to a layer's weight (``role="weight"``; may own per-output-channel pruning state)
  or to a layer's input activation (``role="input"``).
* `Regularizer`: the method's training-time penalty over all quantizers of a model; the search callback, the
  mixin and the monitor call only its methods.

The wrapping, cost model, export and Lightning glue use only these, so adding a method means adding a folder
(config, quantizer, regulariser) and registering it, not changing the shared code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..core.fake_quant import effective_range
from ..errors import NonFiniteError

Role = Literal["weight", "input"]

#: Optimizer group of each role's learned ranges. They differ in scale by one to two orders of magnitude (weights
#: ~0.05-1, post-ReLU inputs ~1-10), and an Adam-type optimizer moves every parameter of a group by about its
#: learning rate per step, so they need rates of their own (`bb_lightning.plugin.search_defaults.derived_range_lr`).
RANGE_GROUPS: dict[str, str] = {"weight": "ranges", "input": "input_ranges"}


class QuantizerBase(nn.Module):
    """Base class for quantizers.

    Subclasses own a 0-dim range parameter ``x_max`` and a persistent boolean buffer ``signed``. Ranges of weight
    quantizers are initialised eagerly from the weight (an all-zero weight: at the first training-mode forward that
    sees it non-zero); input quantizers initialise theirs from the first batch they see in training mode (until
    then, and in evaluation before that, they pass inputs through unchanged).
    """

    method: ClassVar[str] = "base"
    #: Whether the quantizer owns a learned 0-dim range parameter ``x_max`` (otherwise ranges come from statistics
    #: and the subclass overrides `init_range` / `range`).
    learned_range: ClassVar[bool] = True
    #: The grid the exported config names: ``"symmetric"`` (``[-u, u]`` / ``[0, u]``) or ``"minmax"`` (affine).
    grid: ClassVar[str] = "symmetric"

    def __init__(self, role: Role, num_channels: int | None = None) -> None:
        super().__init__()
        if role not in ("weight", "input"):
            raise ValueError(f"Expected `role` to be 'weight' or 'input', but got {role!r}.")
        self.role: Role = role
        self.num_channels = num_channels
        if self.learned_range:
            self.x_max = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("signed", torch.tensor(False))
        self.register_buffer("initialized", torch.tensor(False))
        # host-side mirrors of the two flags, so the hot path never reads a device tensor
        self._signed = False
        self._initialized = False
        self.frozen = False
        #: the wrapped layer's name (set by the wrapping; used in error messages)
        self.layer_name = ""

    # ----- ranges -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_range(self, x: Tensor) -> None:
        """Set sign and range from data: ``x_max = max|x|`` (signed) or ``max(x)`` (unsigned).

        Weights are always signed; inputs are signed iff ``min(x) < 0``. An all-zero weight (e.g. a folded
        BatchNorm whose ``gamma`` starts at 0, as in timm's ResNets) leaves the quantizer uncalibrated, and the next
        training-mode forward tries again. Recorded choices (spec 1.1): the reference takes the sign of weights from
        the data too, and uses ``max(x)`` for signed tensors, clipping the most negative values; we use ``max|x|``
        so nothing is clipped at initialisation. Under ``torch.distributed`` input ranges are reduced over all ranks
        (min of minima, max of maxima), so every rank starts from the same range.
        """
        rng = self._data_range(x)
        if rng is None:
            return
        lo, hi = rng
        signed = True if self.role == "weight" else bool(lo < 0)
        u = torch.maximum(hi, -lo) if signed else hi
        self.x_max.copy_(u.clamp_min(1e-8))
        self.signed.fill_(signed)
        self.initialized.fill_(True)
        self._signed, self._initialized = signed, True

    @torch.no_grad()
    def _data_range(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(min(x), max(x))`` in float32 for range initialisation, or ``None`` for an empty or all-zero weight.

        Raises `NonFiniteError` naming the layer for NaN/inf. Input ranges are reduced over all ranks under
        ``torch.distributed`` (min of minima, max of maxima; spec pitfall 9), so every rank starts from the same range;
        the NaN/inf check is reduced with them, so that every rank raises instead of waiting for one that did.
        """
        x = x.detach().float()
        if x.numel() == 0:
            return None
        lo, hi = torch.aminmax(x)
        bad = (~(torch.isfinite(lo) & torch.isfinite(hi))).float()
        reduced = self.role == "input" and torch.distributed.is_available() and torch.distributed.is_initialized()
        if reduced:
            both = torch.stack([-lo, hi, bad])
            torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
            lo, hi, bad = -both[0], both[1], both[2]
        finite, zero = torch.stack([bad == 0, (lo == 0) & (hi == 0)]).tolist()
        if not finite:  # one read, once per quantizer (and per step while a weight stays all-zero)
            where = "the first batch it sees" if self.role == "input" else "the weight"
            raise NonFiniteError(
                f"Cannot initialise the {self.role} range of layer `{self.layer_name or '?'}`: {where} contains "
                f"NaN/inf{' on at least one rank' if reduced else ''} (min {float(lo)}, max {float(hi)}). Check the "
                "data and the layers before it."
            )
        if zero and self.role == "weight":
            return None  # nothing to take a range from yet (weights are the same on every rank)
        return lo, hi

    @staticmethod
    def channel_view(t: Tensor, ndim: int) -> Tensor:
        """``[C] -> [C, 1, ..., 1]`` to broadcast per output channel over an ``ndim``-dim tensor; 0-dim stays."""
        return t.view((-1,) + (1,) * (ndim - 1)) if t.dim() else t

    def range(self) -> tuple[float, float]:
        """The clip range ``(lo, hi)`` in the tensor's units, as used in the forward pass."""
        u = float(effective_range(self.x_max.detach()))
        return (-u if self._signed else 0.0), u

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._signed = bool(self.signed)
        self._initialized = bool(self.initialized)
        self._on_state_loaded()

    def _on_state_loaded(self) -> None:
        """Hook for subclasses to refresh host-side caches after ``load_state_dict``."""

    # ----- what the shared machinery calls ------------------------------------------------------------------
    def hard_bits(self) -> int:
        """Bit width after training: ``0`` if every channel is pruned, ``>= 32`` means float."""
        raise NotImplementedError

    def channel_bits(self) -> Tensor | None:
        """Integer ``[num_channels]`` bit widths when they differ per output channel, else ``None`` (weights only)."""
        return None

    def channel_ranges(self) -> Tensor | None:
        """``[C, 2]`` per-output-channel ``(lo, hi)`` when ranges differ per channel, else ``None``."""
        return None

    def granularity(self) -> str:
        """Granularity of the bit widths: ``"tensor"``, ``"channel"`` or ``"group:<size>"`` (exported)."""
        return "tensor"

    def expected_bits(self) -> Tensor:
        """Differentiable bit width: 0-dim, or ``[num_channels]`` per output channel (for bit-cost regularisers)."""
        raise NotImplementedError(f"`{type(self).__name__}` does not expose differentiable bit widths.")

    def observe_weight(self, weight: Tensor) -> None:
        """Refresh statistics taken from the current weight (called before export); default: nothing to do."""

    def constrain_(self) -> None:
        """Project parameters back into their valid set after an optimizer step; default: nothing to do."""

    def keep_mask(self) -> Tensor | None:
        """Boolean ``[num_channels]`` mask of kept output channels, or ``None`` if the method does not prune."""
        return None

    def penalty(self, cost_scale: float) -> Tensor:
        """This quantizer's regulariser term; ``cost_scale`` is its cost weight (e.g. ``MACs / MACs_max``)."""
        raise NotImplementedError

    def penalty_key(self) -> Hashable:
        """Quantizers with equal keys are summed together by `bb_lightning.cost.penalty.CostRegularizer`."""
        return type(self)

    def log_details(self) -> dict[str, Tensor]:
        """Method-specific values worth watching during a search, for logging only (never in the hot path).

        Returns:
            Detached 0-dim tensors keyed by a short column name (e.g. Bayesian Bits' gate-on probabilities
            ``{"gate_4": ..., "gate_8": ...}``, BitPruning's ``{"bitlength": ...}``). The W&B per-layer table and
            histograms use the keys as column names. Default: nothing.
        """
        return {}

    def refresh_host_state(self) -> None:
        """Refresh host-side caches of device state (called between epochs); default: nothing to do."""

    def freeze(self) -> None:
        """Fix the bit width (and mask) deterministically; afterwards only ranges train and the penalty is 0."""
        self.frozen = True

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimizer group name (``"gates"``, ``"ranges"``, ``"input_ranges"``, ``"bits"``, ...)."""
        return {self.range_group: [self.x_max]} if self.learned_range else {}

    @property
    def range_group(self) -> str:
        """The optimizer group of this quantizer's learned range: ``"ranges"`` (weights) or ``"input_ranges"``."""
        return RANGE_GROUPS[self.role]

    def range_scale(self) -> float | None:
        """Magnitude of the learned range (``max(|lo|, |hi|)``, tensor units) once calibrated, else ``None``; reads
        the device (set-up only)."""
        if not self._initialized or self.range_group not in self.parameter_groups():
            return None
        lo, hi = self.range()
        return max(abs(lo), abs(hi))

    def extra_repr(self) -> str:
        return f"role={self.role}, channels={self.num_channels}, signed={self._signed}"


class Regularizer(ABC):
    """A method's training-time regulariser over every quantizer of one wrapped model.

    Built as ``cls(records, modules, cost, input_bits)`` (planned `bb_lightning.cost.record.LayerRecord` s, the
    wrapped layers by name, the method's cost config, the bits of the unquantized network input).

    Attributes:
        cost: the config it was built from.
        scale: the schedule's multiplier in ``[0, 1]`` (warm-up / ramp), set by the search callback every batch.
    """

    cost: Any
    scale: float = 1.0

    @abstractmethod
    def __call__(self) -> Tensor:
        """The term added to the training loss (0-dim, float32, differentiable; strength and ``scale`` applied).
        Computing it changes no state."""

    @abstractmethod
    def raw(self) -> Tensor:
        """The regulariser without strength and schedule (0-dim, differentiable)."""

    @abstractmethod
    def value(self) -> Tensor:
        """The regulariser in the units the method reports (detached), for logging."""

    @property
    @abstractmethod
    def strength(self) -> float | Tensor:
        """The multiplier in effect (strength times ``scale``; a device tensor if it is learned)."""

    def update(self) -> None:
        """State update after each training loss (e.g. a dual ascent step); default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """What must survive a resume (plain tensors and numbers); default: nothing."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`."""
