"""Wrapping, float equivalence, gradients and export over many timm architectures (pure PyTorch, CPU).

Each architecture is built with random weights (``pretrained=False``, never any download) at a small input size and
run through the whole pipeline::

    plan_layers -> apply_plan("bayesian_bits") -> CostRegularizer -> build_config -> save/load -> apply_config

Invariants checked for every architecture:

1. every nn.Conv1d / nn.Conv2d / nn.Linear that runs in a forward pass is wrapped (counted with our own forward
   hooks), nothing else is, MACs and execution order agree, and the state dict keeps every original key and value;
2. with every gate on (32-bit = float path) and ranges wide enough that nothing clips, the wrapped model's eval output
   equals the float model's (catches effective-weight bugs of ScaledStdConv2d / StdConv2d / Conv2dSame ...);
3. a train-mode forward + backward of ``CE + reg()`` is finite and every gate and range parameter gets a gradient;
4. after randomising the gates (mixed bit widths, pruned channels), ``build_config -> save -> load -> apply_config``
   on a freshly built float model with the searched weights reproduces the gated model's eval logits;
5. ``MixedPrecisionConfig`` round-trips through JSON and its totals agree with the per-layer entries.
"""

from __future__ import annotations

import copy
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import bb_lightning  # noqa: F401  (registers the methods)
from bb_lightning.config import WrapConfig
from bb_lightning.cost.penalty import CostConfig
from bb_lightning.methods.bayesian_bits import BayesianBitsRegularizer as CostRegularizer
from bb_lightning.export import MixedPrecisionConfig, apply_config, build_config
from bb_lightning.methods.bayesian_bits import BayesianBitsConfig
from bb_lightning.methods.fixed import FixedQuantizer
from bb_lightning.wrap.layers import QuantizedLayer
from bb_lightning.wrap.swap import apply_plan, plan_layers

pytestmark = pytest.mark.timm_models

torch.set_num_threads(2)

SEED = 0
BATCH = 2
NUM_CLASSES = 10
INPUT_BITS = 8
TIMEOUT = 120  # seconds per test; each case takes a few seconds on 2 CPU cores
CANDIDATE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)

# special layer types (exact class, by qualified name) that an architecture must contain
SCALED_STD = "timm.layers.std_conv.ScaledStdConv2d"
SCALED_STD_SAME = "timm.layers.std_conv.ScaledStdConv2dSame"
STD = "timm.layers.std_conv.StdConv2d"
STD_SAME = "timm.layers.std_conv.StdConv2dSame"
CONV_SAME = "timm.layers.conv2d_same.Conv2dSame"
CONV1D = "torch.nn.modules.conv.Conv1d"


# ----------------------------------------------------------------------------------------------------------------
# architectures
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arch:
    id: str
    build: Callable[[], nn.Module]
    img: int = 32
    special: tuple[str, ...] = ()


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)


def _nfnet_same() -> nn.Module:
    """``test_nfnet`` with TF 'SAME' padding: every ScaledStdConv2d becomes a ScaledStdConv2dSame."""
    from timm.models.nfnet import NormFreeNet, model_cfgs

    return NormFreeNet(replace(model_cfgs["test_nfnet"], same_padding=True), num_classes=NUM_CLASSES)


def _resnetv2_bit() -> nn.Module:
    """A small BiT-style ResNetV2 (pre-activation, GroupNorm, StdConv2d with eps=1e-8 as resnetv2_50x1_bit)."""
    from timm.layers import GroupNormAct, StdConv2d
    from timm.models.resnetv2 import ResNetV2

    return ResNetV2(
        layers=[1, 1, 1, 1],
        channels=(64, 128, 256, 512),
        stem_chs=32,
        stem_type="fixed",
        conv_layer=partial(StdConv2d, eps=1e-8),
        norm_layer=partial(GroupNormAct, num_groups=8),
        num_classes=NUM_CLASSES,
    )


def _densenet() -> nn.Module:
    from timm.models.densenet import DenseNet

    return DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_classes=NUM_CLASSES)


def _mixer() -> nn.Module:
    """A small MLP-Mixer (mixer_s32_224's block structure; 16 tokens of width 64)."""
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=NUM_CLASSES, img_size=32, patch_size=8, num_blocks=2, embed_dim=64)


ARCHS = [
    Arch("test_resnet", _timm("test_resnet")),
    Arch("test_resnet_eca", _timm("test_resnet", block_args=dict(attn_layer="eca")), special=(CONV1D,)),
    Arch("resnetv2_bit_small", _resnetv2_bit, special=(STD,)),
    Arch("regnetx_002", _timm("regnetx_002")),
    Arch("test_efficientnet", _timm("test_efficientnet")),
    Arch("test_efficientnet_evos", _timm("test_efficientnet_evos")),
    Arch("mobilenetv2_050", _timm("mobilenetv2_050")),
    Arch("mobilenetv3_small_050", _timm("mobilenetv3_small_050")),
    Arch("tf_mobilenetv3_small_minimal_100", _timm("tf_mobilenetv3_small_minimal_100"), special=(CONV_SAME,)),
    Arch("ghostnet_050", _timm("ghostnet_050")),
    Arch("densenet_small", _densenet),
    Arch("test_nfnet", _timm("test_nfnet"), special=(SCALED_STD,)),
    Arch("test_nfnet_same", _nfnet_same, special=(SCALED_STD_SAME,)),
    Arch("test_byobnet", _timm("test_byobnet")),
    Arch("test_convnext", _timm("test_convnext")),
    Arch("test_convnext2", _timm("test_convnext2")),
    Arch("test_mambaout", _timm("test_mambaout")),
    Arch("test_vit", _timm("test_vit")),
    Arch("vit_tiny_r_s16_p8_224", _timm("vit_tiny_r_s16_p8_224", img_size=32), special=(STD_SAME,)),
    Arch("mixer_small", _mixer),
    Arch("test_coatnet", _timm("test_coatnet", img_size=32)),
    Arch("test_maxvit", _timm("test_maxvit", img_size=32)),
]
ARCH_PARAMS = [pytest.param(a, id=a.id) for a in ARCHS]


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def _build(arch: Arch) -> nn.Module:
    """A float model with deterministic random weights (same seed, same kwargs -> same weights), in eval mode."""
    torch.manual_seed(SEED)
    return arch.build().eval()


def _images(arch: Arch, batch: int = BATCH, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, arch.img, arch.img, generator=g)


def _labels(batch: int = BATCH, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, NUM_CLASSES, (batch,), generator=g)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve(qualname: str) -> type:
    module, _, name = qualname.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _is_quantizer_key(key: str) -> bool:
    return ".weight_quantizer." in key or ".input_quantizer." in key


def _float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without quantizer entries (the keys the unwrapped model has), cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not _is_quantizer_key(k)}


def _executed_layers(model: nn.Module, x: torch.Tensor) -> tuple[list[str], dict[str, int], set[str]]:
    """Run ``model(x)`` (eval, no grad) with our own hooks on every Conv1d/Conv2d/Linear.

    Returns the names in order of first execution, the MACs per sample (summed over calls) and the names of layers
    whose ``weight_quantizer`` ran (empty for an unwrapped model).
    """
    order: list[str] = []
    macs: dict[str, int] = {}
    quantizers_ran: set[str] = set()
    handles = []
    batch = int(x.shape[0])

    def layer_hook(name):
        def hook(module, _inp, out):
            if name not in macs:
                order.append(name)
                macs[name] = 0
            c_out = module.weight.shape[0]
            macs[name] += module.weight.numel() * out.numel() // (c_out * batch)

        return hook

    def quantizer_hook(name):
        def hook(_module, _inp, _out):
            quantizers_ran.add(name)

        return hook

    for name, m in model.named_modules():
        if isinstance(m, CANDIDATE_TYPES):
            handles.append(m.register_forward_hook(layer_hook(name)))
            if isinstance(m, QuantizedLayer):
                handles.append(m.weight_quantizer.register_forward_hook(quantizer_hook(name)))
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order, macs, quantizers_ran


def _wrap(model: nn.Module, arch: Arch, method_config: BayesianBitsConfig | None = None):
    records = plan_layers(model, WrapConfig(), _images(arch, batch=1))
    modules = apply_plan(model, records, "bayesian_bits", method_config or BayesianBitsConfig())
    return records, modules


def _calibrate_input_ranges(model: nn.Module, arch: Arch) -> None:
    """One train-mode forward initialises the input ranges; the float state (BN statistics ...) is restored."""
    saved = _float_state(model)
    model.train()
    with torch.no_grad():
        model(_images(arch, seed=3))
    model.load_state_dict(saved, strict=False)
    model.eval()
    for m in model.modules():
        if isinstance(m, QuantizedLayer) and m.input_quantizer is not None:
            assert bool(m.input_quantizer.initialized)


def _randomise_gates(modules: dict[str, nn.Module], seed: int = 7) -> None:
    """Different bit widths per layer and some pruned channels, reproducibly.

    ``log_alpha ~ U(-3, 3)`` spreads the doubling gates around the evaluation threshold (-0.94) and the cut-off (-2);
    ``prune_log_alpha ~ U(-2, 6)`` prunes about 13% of the output channels.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules.values():
            for q in (m.weight_quantizer, m.input_quantizer):
                if q is None:
                    continue
                q.log_alpha.copy_(torch.empty(q.log_alpha.shape).uniform_(-3.0, 3.0, generator=g))
                if q.prune_log_alpha is not None:
                    q.prune_log_alpha.copy_(torch.empty(q.prune_log_alpha.shape).uniform_(-2.0, 6.0, generator=g))


def _assert_close_to(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(expected).all(), f"{what}: reference output is not finite"
    scale = float(expected.abs().max().clamp_min(1e-6))
    err = float((actual - expected).abs().max())
    assert err <= rel * scale, f"{what}: max abs error {err:.3e} > {rel:g} * logit scale {scale:.3e}"


def _gated_setup(arch: Arch):
    """Wrapped model with calibrated input ranges and randomised gates, plus its deterministic eval logits."""
    model = _build(arch)
    records, modules = _wrap(model, arch)
    _calibrate_input_ranges(model, arch)
    _randomise_gates(modules)
    model.eval()
    with torch.no_grad():
        logits = model(_images(arch))
    return model, records, modules, logits


# ----------------------------------------------------------------------------------------------------------------
# 0. the zoo covers what it claims
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(TIMEOUT)
def test_zoo_is_diverse():
    assert len(ARCHS) >= 12
    assert len({a.id for a in ARCHS}) == len(ARCHS)
    covered = {s for a in ARCHS for s in a.special}
    assert {SCALED_STD, SCALED_STD_SAME, STD, STD_SAME, CONV_SAME, CONV1D} <= covered


# ----------------------------------------------------------------------------------------------------------------
# 1. every eligible layer wrapped, state dict keeps its keys
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_every_executed_layer_is_wrapped(arch: Arch):
    model = _build(arch)
    x1 = _images(arch, batch=1)
    executed, macs, _ = _executed_layers(model, x1)
    assert executed, f"{arch.id}: no conv/linear layer ran"
    candidates = {n: m for n, m in model.named_modules() if isinstance(m, CANDIDATE_TYPES)}
    types_before = {n: type(m) for n, m in candidates.items()}
    executed_types = {_qualname(types_before[n]) for n in executed}
    for special in arch.special:
        assert special in executed_types, f"{arch.id}: expected executed layers of type {special}, got {executed_types}"
        assert any(type(m) is _resolve(special) for m in candidates.values())
    sd_before = _float_state(model)

    records, modules = _wrap(model, arch)

    # the plan: exactly the executed layers, in execution order, with the MACs we count ourselves
    assert [r.name for r in records] == executed
    assert {r.name: r.macs for r in records} == macs
    assert all(r.wrapped for r in records)
    assert all(r.type == types_before[r.name].__name__ for r in records)
    assert [r.name for r in records if r.is_first] == executed[:1]
    assert [r.name for r in records if r.is_last] == executed[-1:]

    # wrapped set == executed set; unexecuted candidates stay untouched
    wrapped = {n for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    assert wrapped == set(executed), (
        f"{arch.id}: not wrapped {sorted(set(executed) - wrapped)}, wrongly wrapped {sorted(wrapped - set(executed))}"
    )
    assert set(modules) == wrapped
    for name, m in model.named_modules():
        if name in types_before:
            assert isinstance(m, types_before[name]), f"{name}: no longer a {types_before[name].__name__}"
            if name in wrapped:
                assert type(m)._bb_base is types_before[name]
            else:
                assert type(m) is types_before[name]

    # state dict: every original key and value kept; only quantizer entries are new
    sd_after = model.state_dict()
    assert set(sd_before) <= set(sd_after), f"lost keys: {sorted(set(sd_before) - set(sd_after))[:10]}"
    new_keys = set(sd_after) - set(sd_before)
    assert all(_is_quantizer_key(k) for k in new_keys), f"unexpected new keys: {sorted(new_keys)[:10]}"
    assert {k for k in sd_after if not _is_quantizer_key(k)} == set(sd_before)
    for k, v in sd_before.items():
        assert torch.equal(sd_after[k], v), f"{k} changed by wrapping"
    for name in wrapped:
        assert f"{name}.weight_quantizer.x_max" in new_keys
        assert f"{name}.weight_quantizer.log_alpha" in new_keys

    # the wrapped model runs every wrapped layer and its weight quantizer
    executed_after, macs_after, quantizers_ran = _executed_layers(model, x1)
    assert executed_after == executed
    assert macs_after == macs
    assert quantizers_ran == wrapped


# ----------------------------------------------------------------------------------------------------------------
# 2. all gates on (float path) == the float model
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_float_gates_reproduce_float_model(arch: Arch):
    model = _build(arch)
    reference = copy.deepcopy(model).eval()
    x = _images(arch)
    with torch.no_grad():
        expected = reference(x)
    assert torch.isfinite(expected).all(), f"{arch.id}: float model output not finite"

    records, modules = _wrap(model, arch, BayesianBitsConfig(gate_init=6.0))
    _calibrate_input_ranges(model, arch)
    # The float (32-bit) level only clips. Widen every range so that nothing clips, and make the input grids signed:
    # an input calibrated on a non-negative training batch gets an unsigned [0, u] grid, which would (correctly)
    # clip negative evaluation inputs. Done through load_state_dict, which also refreshes the host-side flags.
    state = model.state_dict()
    for key in list(state):
        if key.endswith("_quantizer.x_max"):
            state[key] = state[key] * 1000.0
        elif key.endswith(".input_quantizer.signed"):
            state[key] = torch.ones_like(state[key])
    model.load_state_dict(state)
    model.eval()
    for name, m in modules.items():
        assert m.weight_quantizer.hard_bits() == 32, name
        mask = m.weight_quantizer.keep_mask()
        assert mask is None or bool(mask.all()), name
        if m.input_quantizer is not None:
            assert m.input_quantizer.hard_bits() == 32, name

    with torch.no_grad():
        actual = model(x)
    _assert_close_to(actual, expected, 1e-5, f"{arch.id}: wrapped float-gated vs float model")

    # the effective weight each wrapped layer quantizes is the one its original forward uses
    for name, m in modules.items():
        ref_layer = dict(reference.named_modules())[name]
        with torch.no_grad():
            w_eff = m.quantized_weight()
            if isinstance(ref_layer, nn.Conv2d) and type(ref_layer) is not nn.Conv2d:
                # special conv: compare through its own forward on a probe input
                probe = torch.randn(1, ref_layer.in_channels, 9, 9, generator=torch.Generator().manual_seed(5))
                out_ref = ref_layer(probe)
                out_adapter = type(m)._bb_adapter.run(m, probe, w_eff)
                _assert_close_to(out_adapter, out_ref, 1e-5, f"{arch.id}: {name} ({type(ref_layer).__name__})")


# ----------------------------------------------------------------------------------------------------------------
# 3. train step: finite loss, gradient for every gate and range
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_train_step_gradients(arch: Arch):
    model = _build(arch)
    # which float parameters get a gradient without quantization
    reference = copy.deepcopy(model).train()
    x, y = _images(arch), _labels()
    F.cross_entropy(reference(x), y).backward()
    float_grad = {n for n, p in reference.named_parameters() if p.grad is not None}

    records, modules = _wrap(model, arch)
    reg = CostRegularizer(records, modules, CostConfig())
    model.train()
    torch.manual_seed(11)
    out = model(x)  # the very first training forward also initialises the input ranges
    task = F.cross_entropy(out, y)
    penalty = reg()
    assert penalty.dim() == 0
    loss = task + penalty
    assert torch.isfinite(task) and torch.isfinite(penalty), f"{arch.id}: task {task.item()} reg {penalty.item()}"
    loss.backward()

    named = dict(model.named_parameters())
    for name, m in modules.items():
        quantizers = [("weight_quantizer", m.weight_quantizer)]
        if m.input_quantizer is not None:
            quantizers.append(("input_quantizer", m.input_quantizer))
        for qname, q in quantizers:
            # an all-zero weight (timm's zero-initialised last layer of a block) has no range to take yet
            waits = qname == "weight_quantizer" and not m._bb_adapter.weight(m).any()
            assert bool(q.initialized) != waits, f"{name}.{qname}: initialised {bool(q.initialized)}"
            params = [("log_alpha", q.log_alpha), ("x_max", q.x_max)]
            if q.prune_log_alpha is not None:
                params.append(("prune_log_alpha", q.prune_log_alpha))
            for pname, p in params:
                full = f"{name}.{qname}.{pname}"
                assert named[full] is p
                assert p.grad is not None, f"No gradient for {full}"
                assert torch.isfinite(p.grad).all(), f"Non-finite gradient for {full}: {p.grad}"
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"Non-finite gradient for {n}"
    # the straight-through estimator passes gradients to every float parameter that had one
    missing = sorted(n for n in float_grad if named[n].grad is None)
    assert not missing, f"{arch.id}: No gradient for {missing[:10]}"


# ----------------------------------------------------------------------------------------------------------------
# 4. export -> apply_config on a fresh float model == gated model (eval)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_export_reproduces_gated_model(arch: Arch, tmp_path):
    model, records, modules, expected = _gated_setup(arch)
    cfg = build_config(records, modules, "bayesian_bits", INPUT_BITS, type(model).__name__)

    # the random gates really give a mixed-precision, partly pruned model
    weight_bits = {layer["weight"]["bits"] for layer in cfg.layers.values()}
    assert len(weight_bits) > 1, f"{arch.id}: gates not diverse enough: {weight_bits}"
    assert any(layer["kept_channels"] is not None for layer in cfg.layers.values()), f"{arch.id}: nothing pruned"

    path = cfg.save(tmp_path / f"{arch.id}.json")
    fresh = _build(arch)
    missing, unexpected = fresh.load_state_dict(_float_state(model), strict=True)
    assert not missing and not unexpected
    apply_config(fresh, MixedPrecisionConfig.load(path))
    fresh.eval()
    for name, m in fresh.named_modules():
        if name in cfg.layers and cfg.layers[name]["quantized"]:
            assert isinstance(m, QuantizedLayer) and isinstance(m.weight_quantizer, FixedQuantizer), name
            assert m.weight_quantizer.hard_bits() == cfg.layers[name]["weight"]["bits"], name
    assert not any(isinstance(p, nn.Parameter) and "log_alpha" in n for n, p in fresh.named_parameters())

    with torch.no_grad():
        actual = fresh(_images(arch))
    _assert_close_to(actual, expected, 1e-5, f"{arch.id}: apply_config vs gated model")


# ----------------------------------------------------------------------------------------------------------------
# 5. config round trip and totals
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_config_roundtrip_and_relative_bops(arch: Arch, tmp_path):
    model, records, modules, _ = _gated_setup(arch)
    cfg = build_config(records, modules, "bayesian_bits", INPUT_BITS, type(model).__name__)
    path = cfg.save(tmp_path / "sub" / "config.json")
    loaded = MixedPrecisionConfig.load(path)
    assert loaded.to_dict() == cfg.to_dict()
    assert list(loaded.layers) == [r.name for r in records]
    assert loaded.model == {"class": type(model).__name__}

    layers = loaded.layers.values()
    total_bops = sum(float(layer["bops"]) for layer in layers)
    total_macs = sum(int(layer["macs"]) for layer in layers)
    assert total_macs == sum(r.macs for r in records) > 0
    assert math.isclose(loaded.totals["relative_bops"], total_bops / (1024 * total_macs), rel_tol=1e-9)
    assert math.isclose(loaded.totals["bops"], total_bops, rel_tol=1e-9)
    assert 0.0 < loaded.totals["relative_bops"] < 1.0

    # each layer's BOPs follow b_w * b_a * MACs * kappa (first layer's input at INPUT_BITS); kappa counted per output
    # channel: kept or not, times the kept share of the inputs of its group that come from the producer (spec 4.1)
    def kept_set(name: str) -> set[int]:
        layer = loaded.layers[name]
        return set(range(layer["weight_shape"][0])) if layer["kept_channels"] is None else set(layer["kept_channels"])

    for rec in records:
        layer = loaded.layers[rec.name]
        assert layer["quantized"] and layer["weight_shape"] == list(rec.weight_shape)
        assert layer["producer"] == rec.producer
        channels = rec.weight_shape[0]
        kept = 0.0
        for o in sorted(kept_set(rec.name)):
            if rec.producer is None:
                kept += 1.0
                continue
            c_in = loaded.layers[rec.producer]["weight_shape"][0]
            width = rec.weight_shape[1] if len(rec.weight_shape) > 2 else c_in  # inputs per group (conv weights)
            groups = c_in // width
            g = o // (channels // groups)
            inputs = range(g * width, (g + 1) * width)
            kept += sum(i in kept_set(rec.producer) for i in inputs) / width
        w_bits = min(layer["weight"]["bits"], 32)
        a_bits = INPUT_BITS if layer["input"] is None else min(layer["input"]["bits"], 32)
        assert layer["input"] is None if rec.is_first else layer["input"] is not None, rec.name
        assert math.isclose(layer["bops"], w_bits * a_bits * rec.macs * kept / channels, rel_tol=1e-9), rec.name
        m = modules[rec.name]
        assert layer["weight"]["bits"] == m.weight_quantizer.hard_bits()
        assert layer["weight"]["range"][1] == pytest.approx(float(m.weight_quantizer.x_max.detach()))
