"""Plain PyTorch layers of a deploy model: float weights equal to the dequantized integer codes (BatchNorm folded),
an optional fixed input quantizer, and the per-output-channel dequantization data the ONNX writer needs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .codes import InputSpec, WeightCodes


class DeployLayerMixin:
    """What a deploy layer carries besides its (dequantized, BN-folded) ``weight`` and ``bias``.

    Attributes:
        input_quantizer: the fixed input quantizer (a module), or ``None`` (float input).
        input_spec: its `InputSpec` (for the ONNX subgraph).
        w_scale: float32 0-dim or ``[C]`` dequantization step of ``weight`` (``None``: float weight).
        w_lo: float32 ``[C]`` / 0-dim offset (min-max grids), else ``None``.
        w_bits, w_signed: code width (0: all pruned) and sign.
        pruned: boolean ``[C]``: output channels whose weight row is all zero (masked / pruned by the search).
        same_pad: pad like TensorFlow "SAME" before the conv (timm ``Conv2dSame``).
        export_mode: when true, ``forward`` skips the input quantizer (the ONNX writer inserts Q/DQ instead).
    """

    input_quantizer: nn.Module | None
    input_spec: InputSpec | None
    w_scale: Tensor | None
    w_lo: Tensor | None
    w_bits: int
    w_signed: bool
    same_pad: bool
    export_mode: bool

    def _init_deploy(self, codes: WeightCodes | None, iq: nn.Module | None, spec: InputSpec | None) -> None:
        self.input_quantizer = iq
        self.input_spec = spec
        self.export_mode = False
        self.same_pad = False
        if codes is None or codes.codes is None:
            self.register_buffer("w_scale", None)
            self.register_buffer("w_lo", None)
            self.w_bits, self.w_signed = 32, True
            self.register_buffer("pruned", torch.zeros(self.weight.shape[0], dtype=torch.bool))
            return
        self.register_buffer("w_scale", codes.scale)
        self.register_buffer("w_lo", codes.lo)
        self.w_bits, self.w_signed = codes.bits, codes.signed
        self.register_buffer("pruned", self.zero_rows())

    def quantize_bias_for_int8_kernels(self) -> None:
        """For a conv with 5..8-bit weights and a 5..8-bit symmetric (or ``lo = 0`` min-max) input, store the bias as
        int32 codes at scale ``s_in * s_w[c]`` (``b_scale``), as onnxruntime's QLinearConv needs."""
        spec = self.input_spec
        self.register_buffer("b_scale", None)
        if (
            self.bias is None or self.w_scale is None or spec is None or isinstance(self, nn.Linear)
            or not 5 <= max(self.w_bits, 1) <= 8 or not 5 <= spec.bits <= 8
            or (spec.grid == "minmax" and spec.lo != 0)
        ):
            return
        s = torch.tensor(spec.scale, dtype=torch.float32) * self.w_scale.float()
        s = s.expand(self.bias.shape).clone()
        codes = torch.round(self.bias.detach() / s).clamp_(-(2**31), 2**31 - 1)
        with torch.no_grad():
            self.bias.copy_(codes * s)
        self.b_scale = s

    def zero_rows(self) -> Tensor:
        """Boolean ``[C]``: output channels whose (dequantized) weight row is all zero (a min-max row of zero codes
        is ``lo``, not zero)."""
        w = self.weight.detach()
        return (w.reshape(w.shape[0], -1) == 0).all(1)

    def quantized(self) -> bool:
        return self.w_scale is not None

    def fold_channel_scale(self, g: Tensor, bias: Tensor) -> None:
        """Fold a per-output-channel BatchNorm ``y = g * out + bias`` into the dequantization and the bias."""
        with torch.no_grad():
            view = (-1,) + (1,) * (self.weight.dim() - 1)
            if self.w_scale is not None:
                codes = self.codes_tensor()
                dead = g == 0  # a zero BN gamma: the row is 0 whatever the codes; keep a valid (nonzero) scale
                codes[dead] = 0
                scale = self.w_scale * g  # 0-dim or [C] times [C] -> [C]
                self.w_scale = torch.where(dead, self.w_scale.expand_as(scale), scale)
                if self.w_lo is not None:
                    self.w_lo = self.w_lo * g
                self.weight.copy_(self.dequantized(codes))
                self.pruned = self.zero_rows()
            else:
                self.weight.mul_(g.view(view))
            self.bias = nn.Parameter(bias.detach().clone().float())

    def codes_tensor(self) -> Tensor:
        """Integer codes recovered from ``weight`` (``round((w - lo) / s)``); exact because ``w = codes * s + lo``."""
        assert self.w_scale is not None
        view = (-1,) + (1,) * (self.weight.dim() - 1)
        w = self.weight.detach()
        if self.w_lo is not None:
            w = w - (self.w_lo.view(view) if self.w_lo.dim() else self.w_lo)
        return torch.round(w / (self.w_scale.view(view) if self.w_scale.dim() else self.w_scale)).long()

    def dequantized(self, codes: Tensor) -> Tensor:
        view = (-1,) + (1,) * (codes.dim() - 1)
        w = codes.float() * (self.w_scale.view(view) if self.w_scale.dim() else self.w_scale)
        if self.w_lo is not None:
            w = w + (self.w_lo.view(view) if self.w_lo.dim() else self.w_lo)
        return w

    def _quant_input(self, x: Tensor) -> Tensor:
        if self.input_quantizer is not None and not self.export_mode:
            x = self.input_quantizer(x)
        return x

    def channel_slice_(self, keep: Tensor) -> None:
        """Keep only the output channels ``keep`` (indices) of the per-channel dequantization data."""
        for attr in ("w_scale", "w_lo", "b_scale"):
            t = getattr(self, attr, None)
            if t is not None and t.dim():
                setattr(self, attr, t[keep])
        self.pruned = self.pruned[keep]


class DeployConv2d(DeployLayerMixin, nn.Conv2d):
    """``nn.Conv2d`` with the fixed input quantizer and optional TF-"SAME" padding (see `DeployLayerMixin`)."""

    def forward(self, x: Tensor) -> Tensor:
        x = self._quant_input(x)
        if self.same_pad:
            from timm.layers.padding import pad_same

            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self._conv_forward(x, self.weight, self.bias)


class DeployConv1d(DeployLayerMixin, nn.Conv1d):
    """``nn.Conv1d`` with the fixed input quantizer (see `DeployLayerMixin`)."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self._quant_input(x), self.weight, self.bias)


class DeployLinear(DeployLayerMixin, nn.Linear):
    """``nn.Linear`` with the fixed input quantizer (see `DeployLayerMixin`). In export mode it computes
    ``x @ weight_t + bias`` with a pre-transposed ``weight_t`` parameter ``[in, out]``, so the ONNX graph holds the
    weight initializer the MatMul reads, under a known name."""

    def forward(self, x: Tensor) -> Tensor:
        x = self._quant_input(x)
        if self.export_mode and hasattr(self, "weight_t"):
            y = torch.matmul(x, self.weight_t)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)


def is_deploy_layer(m: nn.Module) -> bool:
    return isinstance(m, DeployLayerMixin)
