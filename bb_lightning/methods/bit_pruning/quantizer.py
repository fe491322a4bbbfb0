"""BitPruning quantizer: a learned real bitlength ``n`` per tensor (or per output channel / group) on a min-max grid.

Training uses the interpolated quantizer ``Q_n`` of `bb_lightning.methods.bit_pruning.kernels.fractional_quantize`;
evaluation and the frozen (fine-tuning) phase use the integer grid at the rounded bitlength,
i.e. exactly what is exported.
Ranges are statistics, not parameters (spec 1.2): weights use their live min/max (per output channel when the
bitlength is per channel or group), input activations a running (EMA) min/max updated in training and fixed in
evaluation. With ``learn_ranges`` they start there and are then learned (spec R3; `kernels.fractional_quantize`).
With ``weight_grid="symmetric"`` a weight uses the restricted symmetric grid ``[-u, u]`` with 0 as a level
(`kernels.symmetric_fractional_quantize`), ``u = max|w|`` or learned from there.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...core.fake_quant import MIN_RANGE, effective_range
from ...core.minmax import minmax_quantize
from ..base import QuantizerBase, Role
from .config import BitPruningConfig, Granularity, Rounding, WeightGrid
from .kernels import fractional_quantize, symmetric_fractional_quantize


class BitPruningQuantizer(QuantizerBase):
    """Min-max quantizer with a learned bitlength for one weight or input tensor.

    Args:
        config: method settings (bitlength init and bounds, granularity, rounding, EMA momentum).
        role: ``"weight"`` or ``"input"``.
        num_channels: output channels ``C`` of the weight (``weight.shape[0]``); needed for per-channel bitlengths.
        prune: unused (BitPruning prunes bits, not channels); accepted for the common constructor signature.

    Attributes:
        bitlength: learned ``n``: 0-dim (per tensor), ``[C]`` (per channel) or ``[ceil(C / group_size)]``.
        lo, hi: current range: 0-dim, or ``[C]`` for per-channel weight ranges; on the symmetric weight grid ``hi``
            is ``u`` (the learned parameter with ``learn_ranges``) and ``lo = -u`` a buffer.
    """

    learned_range = False
    grid = "minmax"

    def __init__(
        self, config: BitPruningConfig, role: Role, num_channels: int | None = None, prune: bool | None = None
    ) -> None:
        super().__init__(role, num_channels)
        self.config = config
        per_channel = role == "weight" and config.weight_granularity != Granularity.TENSOR and bool(num_channels)
        self.per_channel = per_channel
        if per_channel:
            group = 1 if config.weight_granularity == Granularity.CHANNEL else config.group_size
            n_groups = math.ceil(num_channels / group)  # type: ignore[operator]
            self.bitlength = nn.Parameter(torch.full((n_groups,), float(config.init_bits)))
            index = torch.arange(num_channels) // group  # type: ignore[arg-type]
            self.register_buffer("_group_index", index, persistent=False)
            self.group_size = group
            range_shape: tuple[int, ...] = (num_channels,)  # type: ignore[assignment]
        else:
            self.bitlength = nn.Parameter(torch.tensor(float(config.init_bits)))
            self.register_buffer("_group_index", None, persistent=False)
            self.group_size = 0
            range_shape = ()
        self.learns_ranges = bool(config.learn_ranges)
        self.symmetric = role == "weight" and config.weight_grid == WeightGrid.SYMMETRIC
        if self.symmetric:
            self.grid = "symmetric"
        if self.learns_ranges and self.symmetric:
            self.register_buffer("lo", torch.full(range_shape, -1.0))
            self.hi = nn.Parameter(torch.ones(range_shape))
        elif self.learns_ranges:
            self.lo = nn.Parameter(torch.zeros(range_shape))
            self.hi = nn.Parameter(torch.ones(range_shape))
        else:
            self.register_buffer("lo", torch.zeros(range_shape))
            self.register_buffer("hi", torch.ones(range_shape))

    # ----- bitlengths -------------------------------------------------------------------------------------
    def _channel_n(self, n: Tensor) -> Tensor:
        return n if self._group_index is None else n[self._group_index]

    def expected_bits(self) -> Tensor:
        """``clamp(n, min_bits, max_bits)``: 0-dim, or ``[C]`` per output channel (groups expanded).

        The clamp passes gradients straight through (also at and beyond the bounds, where ``torch.clamp`` gives 0);
        the callback projects ``n`` back into the bounds after every optimizer step (`constrain_`).
        """
        n = self.bitlength
        n = n + (n.detach().clamp(self.config.min_bits, self.config.max_bits) - n.detach())
        return self._channel_n(n)

    @torch.no_grad()
    def rounded_bits(self) -> Tensor:
        """The integer bitlength(s) the rounding rule gives (float tensor, shape of `expected_bits`)."""
        n = self.expected_bits().detach()
        rule = self.config.rounding
        if rule == Rounding.CEIL:
            b = torch.ceil(n - self.config.rounding_eps)
        elif rule == Rounding.ROUND:
            b = torch.round(n)
        else:
            b = torch.floor(n)
        return b.clamp(math.ceil(self.config.min_bits), math.floor(self.config.max_bits))

    def hard_bits(self) -> int:
        return int(self.rounded_bits().max())

    def channel_bits(self) -> Tensor | None:
        return self.rounded_bits().long() if self.per_channel else None

    def granularity(self) -> str:
        if not self.per_channel:
            return "tensor"
        return "channel" if self.group_size == 1 else f"group:{self.group_size}"

    def constrain_(self) -> None:
        with torch.no_grad():
            if not self.frozen:
                self.bitlength.clamp_(self.config.min_bits, self.config.max_bits)
            if self.learns_ranges and self.symmetric:
                self.lo.copy_(-effective_range(self.hi))
            elif self.learns_ranges:  # a learned range never inverts
                torch.maximum(self.hi, self.lo + 1e-6, out=self.hi)

    def freeze(self) -> None:
        super().freeze()
        self.bitlength.requires_grad_(False)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"bits": [self.bitlength]}  # frozen (requires_grad=False) bitlengths are left out by the callback
        if self.learns_ranges:
            groups[self.range_group] = [self.hi] if self.symmetric else [self.lo, self.hi]
        return groups

    def log_details(self) -> dict[str, Tensor]:
        """Per-quantizer values for dashboards: the continuous bitlength(s)."""
        return {"bitlength": self.expected_bits().detach()}

    # ----- ranges -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _weight_stats(self, w: Tensor) -> tuple[Tensor, Tensor]:
        w = w.detach().float()
        if self.symmetric:
            u = w.abs().amax().clamp_min(MIN_RANGE)
            return -u, u
        if self.per_channel:
            return torch.aminmax(w.reshape(w.shape[0], -1), dim=1)
        return torch.aminmax(w)

    @torch.no_grad()
    def observe_weight(self, weight: Tensor) -> None:
        """Min-max ranges: take the weight's current min/max (learned ranges keep their values)."""
        if not self.learns_ranges:
            self._set_weight_range(weight)

    @torch.no_grad()
    def _set_weight_range(self, weight: Tensor) -> None:
        lo, hi = self._weight_stats(weight)
        self.lo.copy_(lo)
        self.hi.copy_(hi)

    @torch.no_grad()
    def init_range(self, x: Tensor) -> None:
        """Weights: their min/max, always signed (an all-zero weight waits for the next forward). Inputs: the first
        batch's min/max (reduced over ranks under DDP), signed iff it has negative values."""
        rng = self._data_range(x)  # NaN/inf check; reduced over ranks for inputs
        if rng is None:
            return
        if self.role == "weight":
            self._set_weight_range(x)  # per output channel when the bitlengths are
        else:
            self.lo.copy_(rng[0])
            self.hi.copy_(rng[1])
        signed = True if self.role == "weight" else bool(self.lo.min() < 0)
        self.signed.fill_(signed)
        self.initialized.fill_(True)
        self._signed, self._initialized = signed, True

    def range(self) -> tuple[float, float]:
        """The overall clip range ``(lo, hi)`` (over all channels for per-channel ranges); ``(-u, u)`` on the
        symmetric grid."""
        if self.symmetric:
            u = float(effective_range(self.hi.detach()))
            return -u, u
        return float(self.lo.detach().min()), float(self.hi.detach().max())

    def channel_ranges(self) -> Tensor | None:
        """``[C, 2]`` per-output-channel ``(lo, hi)``, or ``None`` for a per-tensor range."""
        return torch.stack([self.lo.detach(), self.hi.detach()], dim=1) if self.lo.dim() else None

    def _ranges(self, x: Tensor, update: bool = True) -> tuple[Tensor, Tensor]:
        if self.learns_ranges:
            # parameters; an unsigned tensor keeps its lower end (0 for ReLU outputs): its gradient is exactly 0, and
            # `lo` stays in the graph so that DDP sees every parameter used
            lo = self.lo if self._signed else self.lo.detach() + 0.0 * self.lo
            return self.channel_view(lo, x.dim()), self.channel_view(self.hi, x.dim())
        if self.role == "weight":
            lo, hi = self._weight_stats(x)
            with torch.no_grad():
                self.lo.copy_(lo)
                self.hi.copy_(hi)
        elif self.training and update:
            with torch.no_grad():
                bmin, bmax = torch.aminmax(x.detach())
                w = 1.0 - self.config.ema_momentum
                self.lo.lerp_(bmin, w)
                self.hi.lerp_(bmax, w)
        lo, hi = self.lo, self.hi
        return self.channel_view(lo, x.dim()), self.channel_view(hi, x.dim())

    # ----- forward ------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        fresh = not self._initialized
        if fresh:
            if not self.training:
                return x  # not calibrated yet (e.g. Lightning's sanity check): pass through
            self.init_range(x)  # the first batch's range (reduced over ranks) is used as is, without an EMA step
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):  # quantizer maths stay float32 under AMP
                return self._forward(x.float(), update=not fresh).to(x.dtype)
        return self._forward(x.float(), update=not fresh).to(x.dtype)

    def _forward(self, x: Tensor, update: bool = True) -> Tensor:
        if self.symmetric:
            return self._forward_symmetric(x)
        lo, hi = self._ranges(x, update)
        if not self.training:
            return minmax_quantize(x, lo, hi, self.channel_view(self.rounded_bits(), x.dim()))
        if self.frozen:
            bits = self.channel_view(self.rounded_bits(), x.dim())
            if not self.learns_ranges:
                return minmax_quantize(x, lo, hi, bits)
            return fractional_quantize(x, bits, lo, hi, learn_range=True)  # integer bits: Q_b, with range gradients
        return fractional_quantize(x, self.channel_view(self.expected_bits(), x.dim()), lo, hi, self.learns_ranges)

    def _forward_symmetric(self, x: Tensor) -> Tensor:
        """A weight on the symmetric grid ``[-u, u]``: ``u`` learned, or ``max|w|`` of the live weight."""
        if self.learns_ranges:
            u = effective_range(self.hi)
        else:
            _, u = self._weight_stats(x)
            with torch.no_grad():
                self.hi.copy_(u)
                self.lo.copy_(-u)
        learn = self.learns_ranges and self.training
        if not self.training or self.frozen:
            return symmetric_fractional_quantize(x, self.rounded_bits(), u, learn, blend=False)
        return symmetric_fractional_quantize(x, self.expected_bits(), u, learn)

    def extra_repr(self) -> str:
        gran = "tensor" if not self.per_channel else f"channels/{self.group_size}"
        ranges = "learned" if self.learns_ranges else "min-max"
        return (f"role={self.role}, channels={self.num_channels}, granularity={gran}, ranges={ranges}, "
                f"grid={self.grid}")
