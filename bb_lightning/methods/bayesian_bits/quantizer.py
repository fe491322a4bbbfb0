"""The Bayesian Bits quantizer: a 2-bit base grid plus gated residuals at 4, 8, 16 and 32 bits.

With doubling gates ``z_4 .. z_32`` (hard-concrete, one scalar each per tensor) and an optional per-channel pruning
gate ``z_2`` (weights only), the reference output is the nested sum (spec 1.4)::

    x_q = z_2 * (x_2 + z_4 * (e_4 + z_8 * (e_8 + z_16 * (e_16 + z_32 * e_32))))

with ``e_{2b} = Q_{2b}(x_c) - Q_b(x_c)`` the residual of the ungated lower reconstruction. Writing ``g_b`` for the
cumulative gate product up to ``b`` (``g_2 = 1``), this equals ``z_2 * sum_b (g_b - g_{2b}) * Q_b(x_c)``: a convex
combination of direct ``b``-bit quantizations. Levels whose weight is exactly 0 and that no fractional gate's gradient
needs are not computed (on CPU this is decided per step from the sampled gates, which costs no device sync; on
accelerators only levels cut off by ``gate_cutoff`` are skipped, from a host-side copy refreshed whenever the module
switches train/eval mode or loads a state dict).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...core.fake_quant import nested_quantize
from ...errors import NonFiniteError
from ..base import QuantizerBase, Role
from . import hard_concrete as hc
from .config import BayesianBitsConfig
from .host_path import HostNested, channel_gates, host_sample


class BayesianBitsQuantizer(QuantizerBase):
    """Gated residual quantizer for one weight or input tensor.

    Args:
        config: method settings (bit chain, gate inits, pruning, thresholds).
        role: ``"weight"`` or ``"input"``.
        num_channels: output channels ``C`` of the weight (``weight.shape[0]``); needed for pruning gates.
        prune: ``False`` switches pruning off for this tensor (e.g. the classifier) even if ``config.prune``;
            inputs never prune.

    Attributes:
        log_alpha: ``[len(bits) - 1]`` doubling-gate locations, ``z_4 .. z_top``.
        prune_log_alpha: ``[C]`` pruning-gate locations ``z_2``, or ``None``.
        x_max: 0-dim range ``u``.
    """

    def __init__(
        self, config: BayesianBitsConfig, role: Role, num_channels: int | None = None, prune: bool | None = None
    ) -> None:
        super().__init__(role, num_channels)
        self.config = config
        self.bits: tuple[int, ...] = tuple(config.bits)
        self.log_alpha = nn.Parameter(torch.tensor(config.gate_inits, dtype=torch.float32))
        prune = config.prune if prune is None else (config.prune and prune)
        if role == "weight" and prune and num_channels:
            self.prune_log_alpha: nn.Parameter | None = nn.Parameter(torch.full((num_channels,), config.prune_init))
        else:
            self.register_parameter("prune_log_alpha", None)
        self.register_buffer("_bits_f", torch.tensor(self.bits, dtype=torch.float32), persistent=False)
        self._det_key: tuple | None = None
        self._det: tuple[int, Tensor | None] = (0, None)
        self._host_alive = self._count_alive()
        self._host_mask_cache: tuple[tuple, Tensor] | None = None

    # ----- gates ------------------------------------------------------------------------------------------
    @property
    def num_gates(self) -> int:
        return len(self.bits) - 1

    def _alive(self) -> Tensor:
        """``[K]`` float mask: 0 from the first doubling gate with ``log_alpha <= gate_cutoff`` on."""
        return (self.log_alpha > self.config.gate_cutoff).to(torch.float32).cumprod(0)

    @torch.no_grad()
    def _count_alive(self) -> int:
        return int(self._alive().sum())

    def refresh_host_state(self) -> None:
        """Re-read which doubling gates are cut off (one device sync); done on every ``train()``/``eval()`` switch
        and state-dict load, so plain-PyTorch users of the wrapping get it too."""
        self._host_alive = self._count_alive()

    def _on_state_loaded(self) -> None:
        self.refresh_host_state()
        self._det_key = None

    def train(self, mode: bool = True) -> BayesianBitsQuantizer:
        self._det_key = None  # also catches writes through `.data`, which do not bump tensor versions
        self.refresh_host_state()
        return super().train(mode)

    def _deterministic_state(self, cached: bool = True) -> tuple[int, Tensor | None]:
        """``(number of doubling gates on, [C] float keep mask or None)`` by the evaluation rule.

        With ``cached`` (the forward pass) the result is reused until a gate parameter's version changes or the
        module switches train/eval mode, so evaluation costs one device sync per quantizer, not one per step.
        """
        p = self.prune_log_alpha
        key = (self.log_alpha._version, None if p is None else p._version, self.log_alpha.device)
        if not cached or key != self._det_key:
            with torch.no_grad():
                thr = self.config.eval_threshold
                on = hc.deterministic(self.log_alpha, thr) * (self.log_alpha > self.config.gate_cutoff)
                n_on = int(on.cumprod(0).sum())
                mask = None if p is None else hc.deterministic(p, thr)
            self._det_key, self._det = key, (n_on, mask)
        return self._det

    # ----- forward ----------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if not self._initialized:
            if not self.training:
                return x  # not calibrated yet (e.g. Lightning's sanity check): pass through
            self.init_range(x)
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):  # quantizer maths stay float32 under AMP
                return self._forward(x.float()).to(x.dtype)
        return self._forward(x.float()).to(x.dtype)

    def _forward(self, x: Tensor) -> Tensor:
        if self.frozen or not self.training:
            return self._deterministic_forward(x)
        return self._stochastic_forward(x)

    def _deterministic_forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return self._deterministic_forward_traced(x)
        n_on, mask = self._deterministic_state()
        cg = None if mask is None else self.channel_view(mask, x.dim())
        return nested_quantize(x, self.x_max, x.new_ones(1), (self.bits[n_on],), self._signed, cg)

    def _deterministic_forward_traced(self, x: Tensor) -> Tensor:
        """`_deterministic_forward` without reading gates on the host (no graph break under ``torch.compile``):
        the same evaluation rule as a convex weight of exactly 1 on one of the levels not cut off at the last
        refresh, so every such level is computed."""
        thr = self.config.eval_threshold
        on = hc.deterministic(self.log_alpha, thr) * self._alive() * self._host_mask(x.device)
        g = torch.cat([on.new_ones(1), torch.cumprod(on, 0)])
        weights = (g - torch.cat([g[1:], on.new_zeros(1)]))[: self._host_alive + 1].detach()
        cg = None
        if self.prune_log_alpha is not None:
            cg = self.channel_view(hc.deterministic(self.prune_log_alpha, thr), x.dim())
        return nested_quantize(x, self.x_max, weights, self.bits[: self._host_alive + 1], self._signed, cg)

    def _host_mask(self, device: torch.device) -> Tensor:
        """``[K]`` float mask of the doubling gates not cut off at the last refresh, cached on ``device``."""
        key = (device, self._host_alive)
        if self._host_mask_cache is None or self._host_mask_cache[0] != key:
            mask = (torch.arange(self.num_gates) < self._host_alive).to(device=device, dtype=torch.float32)
            self._host_mask_cache = (key, mask)
        return self._host_mask_cache[1]

    def _stochastic_forward(self, x: Tensor) -> Tensor:
        k = self.num_gates
        noise = torch.rand(k, device=x.device)
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            levels, weights = self._host_levels(noise)
            z = idx = dz = None
            if self.prune_log_alpha is not None:
                z, idx, dz = channel_gates(self.prune_log_alpha.detach(), torch.rand_like(self.prune_log_alpha))
            w_host = [1.0] if weights is None else weights.tolist()
            bits = [self.bits[i] for i in levels]
            return HostNested.apply(
                x, self.x_max, weights, w_host, self.prune_log_alpha, z, idx, dz, bits, self._signed
            )
        # accelerators: no host reads; only levels cut off at the last refresh are skipped
        z = hc.sample(self.log_alpha, noise) * self._alive() * self._host_mask(x.device)
        g = torch.cat([z.new_ones(1), torch.cumprod(z, 0)])
        weights = (g - torch.cat([g[1:], z.new_zeros(1)]))[: self._host_alive + 1]
        levels = list(range(self._host_alive + 1))
        cg = None
        if self.prune_log_alpha is not None:
            cg = self.channel_view(hc.sample(self.prune_log_alpha), x.dim())
        bits = [self.bits[i] for i in levels]
        return nested_quantize(x, self.x_max, weights, bits, self._signed, cg)

    def _host_levels(self, noise: Tensor) -> tuple[list[int], Tensor | None]:
        """CPU path: sample the doubling gates on the host and decide which levels must be computed.

        The convex weight of level ``l`` is ``w_l = g_l - g_{l+1}`` (``g`` = cumulative gate products). Computed are
        the levels with ``w_l != 0`` and, for every gate strictly inside ``(0, 1)`` (the only ones with a gradient),
        the level below it. When every reached gate is exactly 0 or 1, one level has weight 1, no gate graph is
        built and ``(levels, None)`` is returned; otherwise the differentiable level weights from the same noise.
        """
        k = self.num_gates
        la = self.log_alpha.detach().tolist()
        if not all(math.isfinite(v) for v in la):
            raise NonFiniteError(
                f"Bayesian Bits gate parameters `log_alpha` = {la} of the {self.role} quantizer of layer "
                f"`{self.layer_name or '?'}` are NaN/inf: an earlier "
                "optimizer step wrote a non-finite gradient into them. The quantization callback stops at the first "
                "such gradient and names the layer."
            )
        alive = k
        for j, v in enumerate(la):
            if v <= self.config.gate_cutoff:
                alive = j
                break
        zl = host_sample(la[:alive], noise.tolist()[:alive]) + [0.0] * (k - alive)
        g = [1.0]
        for j in range(k):
            g.append(g[-1] * zl[j])
        g.append(0.0)
        keep = {lvl for lvl in range(k + 1) if g[lvl] != g[lvl + 1]}
        fractional = {j for j in range(k) if 0.0 < zl[j] < 1.0 and g[j] != 0.0}
        if not fractional:
            (level,) = keep
            return [level], None
        levels = sorted(keep | fractional)
        z = hc.sample(self.log_alpha, noise) * self._alive()  # same noise, now with a graph
        gt = torch.cat([z.new_ones(1), torch.cumprod(z, 0)])
        w = gt - torch.cat([gt[1:], z.new_zeros(1)])
        return levels, (w if len(levels) == k + 1 else w[levels])

    # ----- interface used by the shared machinery ---------------------------------------------------------
    def penalty(self, cost_scale: float) -> Tensor:
        """Spec 3.2: ``1 + sum_b lam_b prod_{b'<=b} pi_b'`` (no pruning) or the channel-mean of the pruned form,
        with ``lam_b = cost_scale * b`` and ``pi = P(z > 0)``. Zero once frozen."""
        if self.frozen:
            return self.log_alpha.new_zeros(())
        cum = torch.cumprod(hc.prob_nonzero(self.log_alpha), 0)
        doubling = cost_scale * torch.dot(self._bits_f[1:], cum)
        if self.prune_log_alpha is not None:
            return hc.prob_nonzero(self.prune_log_alpha).mean() * (cost_scale * self.bits[0] + doubling)
        return 1.0 + doubling

    def penalty_key(self) -> tuple:
        """Quantizers with one bit chain are summed together (`bb_lightning.methods.bayesian_bits.regularizer`)."""
        return (type(self), self.bits)

    def hard_bits(self) -> int:
        n_on, mask = self._deterministic_state(cached=False)
        if mask is not None and not bool(mask.any()):
            return 0
        return self.bits[n_on]

    def keep_mask(self) -> Tensor | None:
        _, mask = self._deterministic_state(cached=False)
        return None if mask is None else mask.bool()

    def gate_probabilities(self) -> Tensor:
        """``[K]`` ``P(z_b > 0)`` of the doubling gates (detached), for logging."""
        return hc.prob_nonzero(self.log_alpha.detach())

    def log_details(self) -> dict[str, Tensor]:
        """``gate_<b>``: ``P(z_b > 0)`` of each doubling gate (the step from ``b/2`` to ``b`` bits), and with pruning
        ``keep_prob``: the mean over the ``C`` output channels of ``P(z_2 > 0)`` (0-dim, detached)."""
        probs = self.gate_probabilities()
        out = {f"gate_{b}": probs[i] for i, b in enumerate(self.bits[1:])}
        if self.prune_log_alpha is not None:
            out["keep_prob"] = hc.prob_nonzero(self.prune_log_alpha.detach()).mean()
        return out

    def freeze(self) -> None:
        super().freeze()
        self.log_alpha.requires_grad_(False)
        if self.prune_log_alpha is not None:
            self.prune_log_alpha.requires_grad_(False)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        gates = [self.log_alpha] + ([self.prune_log_alpha] if self.prune_log_alpha is not None else [])
        return {"gates": gates, self.range_group: [self.x_max]}
