"""Bad input: each gives a clear error naming the argument, layer, file or key at fault."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import bb_lightning
from bb_lightning import BayesianBits, BBConfigError, MixedPrecisionConfig, UnsupportedLayerError, apply_config
from bb_lightning.config import WrapConfig
from bb_lightning.app.data import DigitsDataModule
from bb_lightning.app.module import TimmClassifier
from bb_lightning.methods.bayesian_bits import BayesianBitsConfig
from bb_lightning.wrap.swap import apply_plan, plan_layers


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"regularizer": "flops"}, r"`regularizer`.*\['bops', 'memory', 'expected_bops'\].*'flops'"),
        ({"strength": -0.1}, r"`strength`.*>= 0"),
        ({"strength": "big"}, r"`strength`"),
        ({"bits": (2, 3, 8)}, r"`bits`.*doubling chain"),
        ({"bits": (4, 8)}, r"`bits`.*starting at 2"),
        ({"bits": (2, 4, 8, 16, 32, 64)}, r"`bits`"),
        ({"gate_init": (6.0, 6.0)}, r"`gate_init`.*4 floats"),
        ({"eval_threshold": 1.5}, r"`eval_threshold`"),
        ({"first_layer": "fp16"}, r"`first_layer`.*weights_only"),
        ({"last_layer": "keep"}, r"`last_layer`.*no_prune"),
        ({"input_bits": 0}, r"`input_bits`"),
        ({"gate_lr": 0}, r"`gate_lr`"),
        ({"range_lr": -1.0}, r"`range_lr`"),
        ({"finetune_epochs": -1}, r"`finetune_epochs`"),
        ({"include": 3}, r"`include`"),
        ({"input_size": (3, 0, 32)}, r"`input_size`"),
    ],
)
def test_callback_argument_errors(kwargs, match):
    with pytest.raises(BBConfigError, match=match):
        BayesianBits(**kwargs)


def test_errors_are_builtin_subclasses():
    assert issubclass(BBConfigError, ValueError) and issubclass(UnsupportedLayerError, TypeError)


def test_model_without_quantizable_layers():
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    with pytest.raises(BBConfigError, match="Sequential.*no nn.Conv1d / nn.Conv2d / nn.Linear"):
        plan_layers(model, WrapConfig(), torch.zeros(1, 4))


def test_include_pattern_matching_nothing():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(BBConfigError, match="'blocks.*'"):
        plan_layers(model, WrapConfig(include=["blocks.*"]), torch.zeros(1, 4))


class MyConv(nn.Conv2d):
    def forward(self, x):  # custom maths we cannot see through
        return super().forward(x) * 2


class PlainSubclass(nn.Conv2d):
    pass


def test_conv_subclass_with_unknown_forward_names_layer():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(MyConv(4, 4, 3)))
    with pytest.raises(UnsupportedLayerError, match=r"`1\.0`.*MyConv.*register_layer_adapter.*exclude=\['1\.0'\]"):
        plan_layers(model, WrapConfig(), torch.zeros(1, 1, 8, 8))
    # excluding it works, and a subclass that does not override forward is supported
    records = plan_layers(model, WrapConfig(exclude=["1.0"]), torch.zeros(1, 1, 8, 8))
    assert [(r.name, r.wrapped) for r in records] == [("0", True), ("1.0", False)]  # excluded: planned, left float
    model2 = nn.Sequential(PlainSubclass(1, 4, 3))
    assert [r.name for r in plan_layers(model2, WrapConfig(), torch.zeros(1, 1, 8, 8))] == ["0"]


def test_registered_adapter_makes_subclass_supported():
    from bb_lightning.wrap import adapters

    try:
        bb_lightning.register_layer_adapter(
            MyConv,
            bb_lightning.LayerAdapter(
                weight=lambda m: m.weight, run=lambda m, x, w: m._conv_forward(x, w, m.bias) * 2
            ),
        )
        model = nn.Sequential(MyConv(1, 4, 3))
        x = torch.randn(2, 1, 8, 8)
        ref = model(x)
        records = plan_layers(model, WrapConfig(first_layer="full"), x[:1])
        apply_plan(model, records, "bayesian_bits", BayesianBitsConfig(gate_init=6.0))
        model.train()
        model(x)
        model.eval()
        for q in (model[0].weight_quantizer, model[0].input_quantizer):
            q.x_max.data *= 10
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    finally:
        adapters.LAYER_ADAPTERS.pop(MyConv, None)


def test_unknown_timm_model_name():
    with pytest.raises(BBConfigError, match="not_a_model"):
        TimmClassifier(model_name="not_a_model")


def test_digits_bad_channels():
    with pytest.raises(BBConfigError, match="`channels`"):
        DigitsDataModule(channels=2)


def _config() -> MixedPrecisionConfig:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    records = plan_layers(model, WrapConfig(), torch.zeros(1, 1, 8, 8))
    modules = apply_plan(model, records, "bayesian_bits", BayesianBitsConfig())
    model.train()
    model(torch.randn(2, 1, 8, 8))
    from bb_lightning.export import build_config

    return build_config(records, modules, "bayesian_bits", 8, "Sequential")


def test_config_load_missing_and_corrupt_files(tmp_path):
    with pytest.raises(BBConfigError, match="nope.json.*does not exist"):
        MixedPrecisionConfig.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": ')
    with pytest.raises(BBConfigError, match="bad.json.*not JSON"):
        MixedPrecisionConfig.load(bad)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(version=99), r"version.*99"),
        (lambda d: d.update(format="other"), r"format"),
        (lambda d: d.pop("layers"), r"layers.*missing"),
        (lambda d: d.update(extra=1), r"unknown keys \['extra'\]"),
        (lambda d: d["layers"]["0"]["weight"].update(bits=-1), r"layers\['0'\]\.weight\.bits"),
        (lambda d: d["layers"]["0"]["weight"].update(bits="8"), r"layers\['0'\]\.weight\.bits"),
        (lambda d: d["layers"]["3"]["weight"].pop("signed"), r"layers\['3'\]\.weight: missing keys \['signed'\]"),
        (lambda d: d["layers"]["3"].update(kept_channels=[7]), r"layers\['3'\]\.kept_channels"),
        (lambda d: d["layers"]["0"].update(weight_shape="4x1"), r"layers\['0'\]\.weight_shape"),
        (lambda d: d["layers"]["0"]["input"] or d["layers"]["3"]["input"].update(range=[0, -1]), r"range"),
    ],
)
def test_config_schema_errors_name_the_key(tmp_path, mutate, match):
    d = _config().to_dict()
    mutate(d)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(d))
    with pytest.raises(BBConfigError, match=match) as err:
        MixedPrecisionConfig.load(path)
    assert "cfg.json" in str(err.value)


def test_config_save_is_atomic_and_roundtrips(tmp_path):
    cfg = _config()
    path = cfg.save(tmp_path / "sub" / "cfg.json")
    assert MixedPrecisionConfig.load(path).to_dict() == json.loads(json.dumps(cfg.to_dict()))
    assert [p.name for p in path.parent.iterdir()] == ["cfg.json"]  # no temporary left behind
    with pytest.raises(FileExistsError):
        cfg.save(path, overwrite=False)
    assert "relative BOPs" in cfg.table()


def test_apply_config_to_mismatching_model_names_every_problem():
    cfg = _config()
    other = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten())
    with pytest.raises(BBConfigError, match=r"2 problem.*`0`: weight shape \[8, 1, 3, 3\].*`3`: no such module"):
        apply_config(other, cfg)


def test_config_load_checks_model(tmp_path):
    cfg = _config()
    path = cfg.save(tmp_path / "cfg.json")
    good = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    assert MixedPrecisionConfig.load(path, model=good).layers.keys() == cfg.layers.keys()
    bad = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with pytest.raises(BBConfigError, match=r"cfg.json.*`0`: weight shape \[4, 1, 5, 5\]"):
        MixedPrecisionConfig.load(path, model=bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": ("a",)}, r"`bits`"),
        ({"gate_init": "abc"}, r"`gate_init`"),
        ({"gate_init": float("nan")}, r"`gate_init`"),
        ({"eval_threshold": "0.3"}, r"`eval_threshold`"),
        ({"prune": "false"}, r"`prune`.*true or false"),
        ({"quantize_activations": "no"}, r"`quantize_activations`"),
        ({"strength": float("inf")}, r"`strength`.*finite"),
        ({"prune_init": float("inf")}, r"`prune_init`"),
        ({"export_path": 5}, r"`export_path`"),
        ({"overwrite_export": "yes"}, r"`overwrite_export`"),
        ({"gate_lr": float("inf")}, r"`gate_lr`"),
    ],
)
def test_more_callback_argument_errors(kwargs, match):
    with pytest.raises(BBConfigError, match=match):
        BayesianBits(**kwargs)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(model=5), r"model.*expected an object"),
        (lambda d: d.update(input_bits="x"), r"input_bits"),
        (lambda d: d.update(method=3), r"method"),
        (lambda d: d["layers"]["3"].update(kept_channels=[True]), r"kept_channels"),
        (lambda d: d["layers"]["0"].update(weight_shape=[True, 1, 3, 3]), r"weight_shape"),
        (lambda d: d["layers"]["0"]["weight"].update(range=[0.0, float("inf")]), r"range"),
    ],
)
def test_more_config_schema_errors(tmp_path, mutate, match):
    d = _config().to_dict()
    mutate(d)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(d))
    with pytest.raises(BBConfigError, match=match):
        MixedPrecisionConfig.load(path)


def test_apply_config_rejects_a_model_with_extra_layers():
    import timm

    small = timm.create_model("test_resnet", num_classes=10)
    records = plan_layers(small, WrapConfig(), torch.zeros(1, 3, 32, 32))
    modules = apply_plan(small, records, "bayesian_bits", BayesianBitsConfig())
    from bb_lightning.export import build_config

    cfg = build_config(records, modules, "bayesian_bits", 8, "ResNet")
    bigger = timm.create_model("test_resnet", num_classes=10, layers=(2, 2, 2, 2))
    with pytest.raises(BBConfigError, match=r"conv/linear layers not in the config: \['layer1.1.conv1'"):
        apply_config(bigger, cfg)


def _minmax_config() -> dict:
    from bb_lightning.export import build_config
    from bb_lightning.methods.bit_pruning import BitPruningConfig

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    records = plan_layers(model, WrapConfig(), torch.zeros(1, 1, 8, 8))
    modules = apply_plan(model, records, "bit_pruning", BitPruningConfig(weight_granularity="group", group_size=2))
    model(torch.randn(2, 1, 8, 8))
    return build_config(records, modules, "bit_pruning", 8, "Sequential").to_dict()


def test_minmax_config_roundtrips_with_granularity(tmp_path):
    d = _minmax_config()
    w = d["layers"]["0"]["weight"]
    assert w["grid"] == "minmax" and w["granularity"] == "group:2" and len(w["channel_bits"]) == 4
    assert len(w["channel_ranges"]) == 4 and d["layers"]["3"]["input"]["grid"] == "minmax"
    path = tmp_path / "bp.json"
    path.write_text(json.dumps(d))
    assert MixedPrecisionConfig.load(path).to_dict() == d


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["layers"]["0"]["weight"].update(grid="log"), r"layers\['0'\]\.weight\.grid"),
        (lambda d: d["layers"]["0"]["weight"].update(granularity="row"), r"layers\['0'\]\.weight\.granularity"),
        (lambda d: d["layers"]["0"]["weight"]["channel_bits"].pop(), r"layers\['0'\]\.weight\.channel_bits"),
        (lambda d: d["layers"]["0"]["weight"].update(channel_bits=[9, 9, 9, 9]), r"weight\.channel_bits"),
        (lambda d: d["layers"]["0"]["weight"]["channel_ranges"].append([0, 1]), r"weight\.channel_ranges"),
        (lambda d: d["layers"]["0"]["weight"]["channel_ranges"][0].reverse(), r"weight\.channel_ranges"),
        (lambda d: d["layers"]["0"]["weight"].update(range=[1.0, -1.0]), r"weight\.range.*lo <= hi"),
        (lambda d: d["layers"]["3"]["input"].update(channel_bits=[2]), r"layers\['3'\]\.input\.channel_bits"),
        (lambda d: d["layers"]["0"]["weight"].update(grid="symmetric"), r"weight\.channel_ranges.*minmax"),
    ],
)
def test_minmax_config_errors_name_the_key(tmp_path, mutate, match):
    d = _minmax_config()
    d["layers"]["0"]["weight"]["channel_ranges"][0] = [-0.5, 0.25]  # a range that is not symmetric when reversed
    mutate(d)
    path = tmp_path / "bp.json"
    path.write_text(json.dumps(d))
    with pytest.raises(BBConfigError, match=match):
        MixedPrecisionConfig.load(path)


@pytest.mark.parametrize("value", [False, True, {"a": 1}, object()])
def test_gate_init_of_wrong_type_is_a_config_error(value):
    # found by the hypothesis fuzz: a bool used to reach `iter(False)` inside the validation
    with pytest.raises(BBConfigError, match="gate_init"):
        BayesianBitsConfig(gate_init=value)
