"""A fixed-bit quantizer with a learned range and an optional channel mask (the result of a search)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.fake_quant import FLOAT_BITS, fake_quantize
from ..core.minmax import minmax_quantize
from .base import QuantizerBase, Role


class FixedQuantizer(QuantizerBase):
    """``bits``-bit fake quantizer on ``[-u, u]`` / ``[0, u]`` with straight-through gradients.

    Args:
        role: ``"weight"`` or ``"input"``.
        bits: any integer ``>= 1``; ``>= 32`` means float (clip only); ``0`` means every channel is pruned.
        signed: grid sign.
        x_max: range ``u``; ``None``: uncalibrated, the first training-mode input sets sign and range
            (`QuantizerBase.init_range`) and an evaluation-mode input passes through until then.
        keep: optional boolean ``[C]`` mask of kept output channels (weights only).
    """

    method = "fixed"

    def __init__(
        self, role: Role, bits: int, signed: bool, x_max: float | None, keep: Tensor | None = None
    ) -> None:
        super().__init__(role, None if keep is None else int(keep.numel()))
        if bits < 0:
            raise ValueError(f"Expected `bits` >= 0, but got {bits}.")
        self.bits = int(bits)
        calibrated = x_max is not None
        with torch.no_grad():
            self.x_max.fill_(1.0 if x_max is None else x_max)
            self.signed.fill_(signed)
            self.initialized.fill_(calibrated)
        self._signed, self._initialized = bool(signed), calibrated
        if self.bits == 0 and keep is None:
            raise ValueError("A 0-bit (fully pruned) quantizer needs a channel mask `keep`.")
        self.register_buffer("keep", None if keep is None else keep.to(torch.bool).clone())

    def forward(self, x: Tensor) -> Tensor:
        if not self._initialized:
            if not self.training:
                return x  # not calibrated yet: pass through
            self.init_range(x)
        mask = None if self.keep is None else self.channel_view(self.keep.to(torch.float32), x.dim())
        with torch.autocast(x.device.type, enabled=False):
            bits = self.bits if self.bits > 0 else 2  # fully pruned: the mask zeroes everything
            out = fake_quantize(x.float(), self.x_max, bits, self._signed, mask)
        return out.to(x.dtype)

    def hard_bits(self) -> int:
        if self.keep is not None and not bool(self.keep.any()):
            return 0
        return self.bits

    def keep_mask(self) -> Tensor | None:
        return None if self.keep is None else self.keep.clone()

    def penalty(self, cost_scale: float) -> Tensor:
        return self.x_max.new_zeros(())

    def extra_repr(self) -> str:
        bits = "float" if self.bits >= FLOAT_BITS else self.bits
        return f"role={self.role}, bits={bits}, signed={self._signed}"


class FixedMinMaxQuantizer(QuantizerBase):
    """Fixed min-max (affine) quantizer: ``2^b`` levels from ``lo`` to ``hi``, per tensor or per output channel.

    The result of a BitPruning search. Uses the same kernel as the searched model's evaluation pass, so outputs are
    identical.

    Args:
        role: ``"weight"`` or ``"input"``.
        bits: integer bit width (>= 1), or an integer ``[C]`` tensor of per-channel widths (weights).
        lo: lower end of the range: a float, or a ``[C]`` tensor of per-channel values (weights).
        hi: upper end of the range, like ``lo``.
    """

    method = "fixed_minmax"
    learned_range = False
    grid = "minmax"

    def __init__(self, role: Role, bits: int | Tensor, lo: float | Tensor, hi: float | Tensor) -> None:
        bits_t = torch.as_tensor(bits, dtype=torch.float32)
        lo_t, hi_t = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
        channels = next((int(t.numel()) for t in (bits_t, lo_t, hi_t) if t.dim()), None)
        super().__init__(role, channels)
        if bool((bits_t < 1).any()):
            raise ValueError(f"Expected every bit width >= 1, but got {bits}.")
        self.register_buffer("bits", bits_t.clone())
        self.register_buffer("lo", lo_t.clone())
        self.register_buffer("hi", hi_t.clone())
        with torch.no_grad():
            self.signed.fill_(bool((lo_t < 0).any()))
            self.initialized.fill_(True)
        self._signed, self._initialized = bool(self.signed), True

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            d = x.dim()
            lo, hi, bits = (self.channel_view(t, d) for t in (self.lo, self.hi, self.bits))
            out = minmax_quantize(x.float(), lo, hi, bits)
        return out.to(x.dtype)

    def hard_bits(self) -> int:
        return int(self.bits.max())

    def channel_bits(self) -> Tensor | None:
        return self.bits.long() if self.bits.dim() else None

    def granularity(self) -> str:
        return "channel" if self.bits.dim() else "tensor"

    def channel_ranges(self) -> Tensor | None:
        return torch.stack([self.lo, self.hi], dim=1) if self.lo.dim() else None

    def range(self) -> tuple[float, float]:
        return float(self.lo.min()), float(self.hi.max())

    def penalty(self, cost_scale: float) -> Tensor:
        return self.lo.new_zeros(())

    def extra_repr(self) -> str:
        return f"role={self.role}, bits={self.bits.tolist()}, grid=minmax"
