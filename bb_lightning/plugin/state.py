"""What a wrapped LightningModule carries: the plan, the wrapped layers, the regulariser; (de)serialisable.

The state hangs off the LightningModule as its only added attribute (``_bb_state``, a plain attribute, not a
submodule), so it adds nothing to the state dict. Its plain-data form goes into checkpoints under
``checkpoint["bb_lightning"]`` so that
``LightningModule.load_from_checkpoint`` can re-wrap the model before the weights load.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from .._registry import get_method
from ..config import WrapConfig
from ..cost.record import LayerRecord
from ..errors import BBConfigError
from ..export import MixedPrecisionConfig, build_config
from ..methods.base import QuantizerBase, Regularizer
from ..wrap.swap import apply_plan

STATE_ATTR = "_bb_state"
CHECKPOINT_KEY = "bb_lightning"


def _init_fields(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        v = getattr(obj, f.name)
        out[f.name] = v.value if hasattr(v, "value") else (list(v) if isinstance(v, tuple) else v)
    return out


class QuantizationState:
    """The wrapped layers of one model and everything derived from them."""

    def __init__(
        self,
        method: str,
        method_config: Any,
        wrap: WrapConfig,
        cost: Any,
        records: list[LayerRecord],
        modules: dict[str, nn.Module],
        root_attr: str,
        root: nn.Module,
    ) -> None:
        self.method, self.method_config, self.wrap, self.cost = method, method_config, wrap, cost
        self.records, self.modules, self.root_attr = records, modules, root_attr
        self.model_class = type(root).__name__
        self.regularizer: Regularizer = self._make_regularizer(cost)
        self.penalty_calls = 0
        #: nesting depth of ``training_step`` calls (the mixin adds the penalty at depth 0 only)
        self.step_depth = 0
        self._constrained: list[QuantizerBase] | None = None  # quantizers with a projection, listed on first use
        self.frozen = False
        #: fixed gates kept in the loss (times 0) for DDP; see `bb_lightning.plugin.distributed`
        self.keepalive: list[nn.Parameter] = []

    # ----- quantizers --------------------------------------------------------------------------------------
    def quantizers(self) -> list[QuantizerBase]:
        qs: list[QuantizerBase] = []
        for m in self.modules.values():
            qs.append(m.weight_quantizer)
            if m.input_quantizer is not None:
                qs.append(m.input_quantizer)
        return qs

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups: dict[str, list[nn.Parameter]] = {}
        for q in self.quantizers():
            for name, params in q.parameter_groups().items():
                groups.setdefault(name, []).extend(params)
        return groups

    def range_scales(self) -> dict[str, list[float]]:
        """Magnitudes of the calibrated learned ranges (tensor units) by optimizer group; reads the device."""
        out: dict[str, list[float]] = {}
        for q in self.quantizers():
            scale = q.range_scale()
            if scale is not None:
                out.setdefault(q.range_group, []).append(scale)
        return out

    def _make_regularizer(self, cost: Any) -> Regularizer:
        entry = get_method(self.method)
        if not isinstance(cost, entry.cost_config):
            raise BBConfigError(
                f"Method `{self.method}` takes a `{entry.cost_config.__name__}` regulariser setting, got "
                f"`{type(cost).__name__}`."
            )
        return entry.regularizer(self.records, self.modules, cost, self.wrap.input_bits)

    def set_cost(self, cost: Any) -> None:
        """Use another regulariser setting (a later fit's callback) on the same quantizers."""
        if type(cost) is not type(self.cost) or _init_fields(cost) != _init_fields(self.cost):
            self.regularizer = self._make_regularizer(cost)
            self.cost = cost

    def constrain_(self) -> None:
        """Project quantizer parameters into their valid set (after an optimizer step); only quantizers that define a
        projection are visited (none for Bayesian Bits)."""
        if self._constrained is None:
            self._constrained = [q for q in self.quantizers() if type(q).constrain_ is not QuantizerBase.constrain_]
        for q in self._constrained:
            q.constrain_()

    def penalty(self) -> Tensor:
        self.penalty_calls += 1
        device = next(iter(self.modules.values())).weight.device.type if self.modules else "cpu"
        if torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):  # the regulariser stays float32 under AMP
                out = self.regularizer()
        else:
            out = self.regularizer()
        if self.keepalive:
            out = out + sum(p.sum() for p in self.keepalive) * 0.0
        return out

    def check_same(self, pl_module: nn.Module, method: str, method_config: Any, wrap: WrapConfig) -> None:
        """An already-quantized module keeps its layers: refuse settings that would quantize it differently."""
        if self.method != method:
            raise BBConfigError(
                f"`{type(pl_module).__name__}` is already quantized with `{self.method}`, not `{method}`."
            )
        mine = {**_init_fields(method_config), **_init_fields(wrap)}
        theirs = {**_init_fields(self.method_config), **_init_fields(self.wrap)}
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        if diff:
            raise BBConfigError(
                f"`{type(pl_module).__name__}` is already quantized with different settings "
                + ", ".join(f"{k}={theirs.get(k)!r} (this callback: {mine[k]!r})" for k in diff)
                + ". Use the same settings, or start from a fresh model."
            )

    def freeze(self) -> None:
        for q in self.quantizers():
            q.freeze()  # also makes the gates non-trainable again (ends a DDP keep-alive)
        self.frozen = True
        self.keepalive = []

    def export(self) -> MixedPrecisionConfig:
        return build_config(self.records, self.modules, self.method, self.wrap.input_bits, self.model_class)

    # ----- persistence -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "method_config": _init_fields(self.method_config),
            "wrap": _init_fields(self.wrap),
            "cost": _init_fields(self.cost),
            "records": [r.to_dict() for r in self.records],
            "root_attr": self.root_attr,
            "frozen": self.frozen,
        }

    @classmethod
    def rebuild(cls, pl_module: nn.Module, data: dict[str, Any]) -> QuantizationState:
        """Re-wrap ``pl_module``'s model exactly as recorded in ``data`` (no forward pass needed)."""
        entry = get_method(data["method"])
        method_config = entry.config(**data["method_config"])
        wrap = WrapConfig(**data["wrap"])
        cost = entry.cost_config(**data["cost"])
        records = [LayerRecord.from_dict(r) for r in data["records"]]
        root = resolve_root(pl_module, data["root_attr"])
        modules = apply_plan(root, records, data["method"], method_config)
        state = cls(data["method"], method_config, wrap, cost, records, modules, data["root_attr"], root)
        if data.get("frozen"):
            state.freeze()
        return state


def example_input(pl_module: nn.Module, root: nn.Module, input_size: tuple[int, ...] | None) -> Tensor:
    """A one-sample input to count MACs: ``input_size``, the module's ``example_input_array`` or timm's
    ``pretrained_cfg["input_size"]``."""
    device = next(root.parameters()).device
    if input_size is not None:
        return torch.zeros((1, *input_size), device=device)
    example = getattr(pl_module, "example_input_array", None)
    if isinstance(example, Tensor):
        return example[:1].to(device)
    cfg = getattr(root, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return torch.zeros((1, *cfg["input_size"]), device=device)
    raise BBConfigError(
        f"Cannot tell the input size of `{type(pl_module).__name__}` to count MACs. HINT: pass "
        "`input_size=(C, H, W)` to the callback or set `self.example_input_array` in your LightningModule."
    )


def root_attr_name(pl_module: nn.Module, model_attr: str | None) -> str:
    """The attribute holding the model: ``model_attr`` (checked), else ``"model"`` if it is a module, else ``""``."""
    if model_attr is not None:
        try:
            resolve_root(pl_module, model_attr)
        except AttributeError:
            raise BBConfigError(
                f"`model_attr={model_attr!r}`: `{type(pl_module).__name__}` has no such attribute."
            ) from None
        return model_attr
    return "model" if isinstance(getattr(pl_module, "model", None), nn.Module) else ""


def resolve_root(pl_module: nn.Module, attr: str) -> nn.Module:
    if not attr:
        return pl_module
    root = pl_module
    for part in attr.split("."):
        root = getattr(root, part)
    return root


def get_state(pl_module: nn.Module) -> QuantizationState | None:
    return pl_module.__dict__.get(STATE_ATTR)


def set_state(pl_module: nn.Module, state: QuantizationState) -> None:
    pl_module.__dict__[STATE_ATTR] = state
