"""``QuantizerContract``: the conformance tests every quantization method passes, whatever its maths.

A method's test class subclasses it and says which method and config to test::

    class TestMyMethodContract(QuantizerContract):
        method = "my_method"

        def make_config(self):
            return MyMethodConfig(...)

It runs the method through the shared machinery only (plan, wrap, regulariser, export, apply), on a small conv
net, and checks: shapes and dtypes; float32 maths under autocast; a gradient for every trainable quantizer
parameter; deterministic evaluation equal to the exported fixed model, bit for bit; a state-dict round trip and a
resume through the checkpoint data the callbacks write; cost facts of the live model equal to those of the export
and its table.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from bb_lightning import apply_config, get_method
from bb_lightning.config import WrapConfig
from bb_lightning.cost.facts import config_costs, layer_costs
from bb_lightning.export import build_config
from bb_lightning.plugin.state import QuantizationState
from bb_lightning.wrap.swap import apply_plan, plan_layers

INPUT = (3, 12, 12)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.pw(torch.relu(self.dw(x))))
        return self.head(x.mean((2, 3)))


class QuantizerContract:
    """Subclass with ``method`` (the registered name) and `make_config`; override `make_cost` if the method's default
    regulariser settings give no penalty."""

    method: str = ""
    wrap = WrapConfig(first_layer="full")

    def make_config(self) -> Any:
        raise NotImplementedError

    def make_cost(self) -> Any:
        return get_method(self.method).cost_config()

    # ----- helpers ------------------------------------------------------------------------------------------
    def build(self, seed: int = 0) -> tuple[nn.Module, nn.Module, list, dict]:
        """``(float copy, wrapped model, records, wrapped layers)``; input ranges initialised by one training pass."""
        torch.manual_seed(seed)
        model = Net()
        float_model = copy.deepcopy(model)
        records = plan_layers(model, self.wrap, torch.zeros(1, *INPUT))
        modules = apply_plan(model, records, self.method, self.make_config())
        model.train()
        model(self.batch(seed + 100))
        return float_model, model, records, modules

    def batch(self, seed: int = 1, n: int = 4) -> torch.Tensor:
        return torch.randn(n, *INPUT, generator=torch.Generator().manual_seed(seed))

    def regularizer(self, records: list, modules: dict) -> Any:
        return get_method(self.method).regularizer(records, modules, self.make_cost(), self.wrap.input_bits)

    @staticmethod
    def quantizers(modules: dict) -> list[nn.Module]:
        return [q for m in modules.values() for q in (m.weight_quantizer, m.input_quantizer) if q is not None]

    # ----- the contract -------------------------------------------------------------------------------------
    def test_registered(self):
        entry = get_method(self.method)
        assert entry.quantizer.method == self.method and isinstance(self.make_config(), entry.config)

    def test_shapes_and_dtypes(self):
        _, model, records, modules = self.build()
        x = self.batch()
        for mode in (True, False):
            model.train(mode)
            out = model(x)
            assert out.shape == (4, 5) and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert len(modules) == sum(r.wrapped for r in records) == 4
        reg = self.regularizer(records, modules)()
        assert reg.shape == () and reg.dtype == torch.float32

    @pytest.mark.parametrize("training", [True, False])
    def test_float32_maths_under_autocast(self, training):
        _, model, _, modules = self.build()
        q = next(iter(modules.values())).weight_quantizer.train(training)
        w = torch.randn(8, 3, 3, 3).bfloat16()
        torch.manual_seed(5)
        ref = q(w.float()).bfloat16()
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = q(w)
        assert out.dtype == torch.bfloat16 and torch.equal(out, ref)

    def test_weights_are_signed_and_an_all_zero_weight_waits(self):
        """A weight's grid is signed even if it starts non-negative; an all-zero weight (a folded BatchNorm whose
        gamma starts at 0) leaves the range uncalibrated until a training forward sees a non-zero weight."""
        torch.manual_seed(0)
        model = Net()
        with torch.no_grad():
            model.stem.weight.abs_()
            model.pw.weight.zero_()
        records = plan_layers(model, self.wrap, torch.zeros(1, *INPUT))
        modules = apply_plan(model, records, self.method, self.make_config())
        stem, pw = modules["stem"].weight_quantizer, modules["pw"].weight_quantizer
        assert stem._signed and bool(stem.signed) and stem._initialized
        assert not pw._initialized and not bool(pw.initialized)
        model.train()
        model(self.batch())
        assert not pw._initialized  # still all zero
        w = torch.randn(6, 8, 1, 1, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            model.pw.weight.copy_(w)
        model(self.batch())
        assert pw._initialized and pw._signed and bool(pw.signed)
        lo, hi = pw.range()
        assert lo == pytest.approx(float(w.min()) if pw.grid == "minmax" else -float(w.abs().max()), rel=1e-6)
        assert hi == pytest.approx(float(w.max()) if pw.grid == "minmax" else float(w.abs().max()), rel=1e-6)

    def test_gradient_reaches_every_parameter(self):
        _, model, records, modules = self.build()
        loss = model(self.batch()).square().mean() + self.regularizer(records, modules)()
        loss.backward()
        for i, q in enumerate(self.quantizers(modules)):
            for name, p in q.named_parameters():
                if p.requires_grad:
                    assert p.grad is not None, f"No gradient for quantizer {i} ({q.layer_name}) `{name}`"
                    assert torch.isfinite(p.grad).all(), f"Non-finite gradient for `{name}`"

    def test_eval_equals_exported_fixed_model(self):
        float_model, model, records, modules = self.build()
        model.eval()
        x = self.batch(7)
        with torch.no_grad():
            expected = model(x)
        config = build_config(records, modules, self.method, self.wrap.input_bits, "Net")
        fixed = apply_config(float_model, config).eval()
        with torch.no_grad():
            assert torch.equal(fixed(x), expected)

    def test_state_dict_round_trip_and_resume(self):
        _, model, records, modules = self.build(seed=0)
        for q in self.quantizers(modules):  # move every parameter off its initial value
            with torch.no_grad():
                for p in q.parameters():
                    p.mul_(0.9)
        reg = self.regularizer(records, modules)
        reg.scale = 0.5
        reg()
        reg.update()
        # resume as the callbacks do: re-wrap a fresh model from the checkpoint's plan, then load the weights
        state = QuantizationState(
            self.method, self.make_config(), self.wrap, self.make_cost(), records, modules, "", model
        )
        fresh = Net()
        rebuilt = QuantizationState.rebuild(fresh, copy.deepcopy(state.to_dict()))
        fresh.load_state_dict(model.state_dict())
        rebuilt.regularizer.load_state_dict(reg.state_dict())
        rebuilt.regularizer.scale = reg.scale
        model.eval(), fresh.eval()
        x = self.batch(3)
        with torch.no_grad():
            assert torch.equal(fresh(x), model(x))
            assert torch.equal(rebuilt.regularizer(), reg())
        assert [q.hard_bits() for q in self.quantizers(rebuilt.modules)] == [
            q.hard_bits() for q in self.quantizers(modules)
        ]

    def test_cost_facts_match_export_and_table(self):
        _, model, records, modules = self.build()
        live = layer_costs(records, modules, self.wrap.input_bits)
        config = build_config(records, modules, self.method, self.wrap.input_bits, "Net")
        saved = config_costs(config)
        assert [(c.name, c.w_bits, c.a_bits, c.kept, c.macs) for c in live] == [
            (c.name, c.w_bits, c.a_bits, c.kept, c.macs) for c in saved
        ]
        for a, b in zip(live, saved):
            assert a.bops == pytest.approx(b.bops, rel=1e-6) == pytest.approx(config.layers[a.name]["bops"], rel=1e-6)
        table = config.table()
        for c in saved:
            row = next(line for line in table.splitlines() if line.startswith(c.name + " "))
            assert f"{c.kept}/{c.channels}" in row
