"""BatchNorm folding (spec 5.4, 5.5): pair detection, float equivalence, the folded weight is what gets quantized,
and export -> apply_config of a folded search reproduces its logits."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import bb_lightning  # noqa: F401  (registers bb_vgg7)
from bb_lightning import apply_config
from bb_lightning.config import WrapConfig
from bb_lightning.errors import BBConfigError
from bb_lightning.export import MixedPrecisionConfig, build_config
from bb_lightning.methods.bayesian_bits.config import BayesianBitsConfig
from bb_lightning.wrap.bn_fold import (
    BNFoldedConv2d,
    FoldedBatchNorm,
    find_bn_pairs,
    fold_bn_static,
    fold_bn_train,
    fold_pairs,
    unfold_bn_train,
)
from bb_lightning.wrap.swap import LayerRecord, apply_plan, plan_layers


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a fold that ignores any of them fails."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return model


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, momentum=None), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 36, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4),
    )  # fmt: skip


def test_pairs_of_paper_and_timm_models():
    vgg = timm.create_model("bb_vgg7")
    pairs = find_bn_pairs(vgg, torch.zeros(1, 3, 32, 32))
    convs = ["features.0", "features.3", "features.7", "features.10", "features.14", "features.17"]
    assert pairs == {**{c: f"features.{int(c.split('.')[1]) + 1}" for c in convs}, "fc1": "bn1"}
    resnet = timm.create_model("test_resnet")
    pairs = find_bn_pairs(resnet, torch.zeros(1, 3, 32, 32))
    convs = [n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(pairs) == sorted(convs)  # every conv of a ResNet is followed by a BN
    assert "fc" not in pairs
    assert find_bn_pairs(timm.create_model("bb_lenet5"), torch.zeros(1, 1, 28, 28)) == {}


@pytest.mark.parametrize("model_name", ["bb_vgg7", "test_efficientnet"])  # efficientnet: timm BatchNormAct2d
def test_static_fold_keeps_eval_logits(model_name):
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model(model_name, num_classes=10)).eval()
    x = torch.randn(3, 3, 32, 32)
    ref = model(x)
    pairs = find_bn_pairs(model, x[:1])
    assert pairs
    folded = copy.deepcopy(model)
    fold_pairs(folded, pairs, "static")
    modules = dict(folded.named_modules())
    assert all(isinstance(modules[bn], FoldedBatchNorm) for bn in pairs.values())
    assert all(modules[layer].bias is not None for layer in pairs)
    if model_name == "bb_vgg7":  # every BatchNorm of VGG-7 follows a conv/linear
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules.values())
    out = folded(x)
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    fold_pairs(folded, pairs, "static")  # already folded: nothing changes
    assert torch.equal(folded(x), out)
    train_folded = copy.deepcopy(model)  # training-time folding: same eval logits, BatchNormAct2d keeps its act
    fold_pairs(train_folded, pairs, "train")
    assert (train_folded(x) - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_static_fold_matches_float64_formula():
    conv, bn = nn.Conv2d(2, 3, 1, bias=True), randomize_bn(nn.Sequential(nn.BatchNorm2d(3)))[0]
    model = nn.Sequential(conv, bn)
    w64, b64 = conv.weight.double().clone(), conv.bias.double().clone()
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    fold_bn_static(model, "0", "1")
    assert torch.allclose(conv.weight.double(), w64 * scale.view(-1, 1, 1, 1), atol=1e-6)
    assert torch.allclose(conv.bias.double(), bn.bias.double() + scale * (b64 - bn.running_mean.double()), atol=1e-6)
    assert isinstance(model[1], FoldedBatchNorm)


def test_train_fold_equals_conv_bn_in_train_and_eval():
    torch.manual_seed(0)
    ref = randomize_bn(small_cnn())
    model = copy.deepcopy(ref)
    x = torch.randn(16, 3, 6, 6)
    pairs = find_bn_pairs(model, x[:1])
    assert pairs == {"0": "1", "3": "4", "7": "8"}
    keys = list(model.state_dict())
    fold_pairs(model, pairs, "train")
    assert isinstance(model[0], BNFoldedConv2d) and list(model.state_dict()) == keys  # same state-dict keys
    for _ in range(2):  # batch statistics and two running-statistics updates (incl. momentum=None)
        ref.train(), model.train()
        a, b = ref(x), model(x)
        assert (a - b).abs().max().item() < 1e-4
        for name in ("1", "4", "8"):
            r, m = dict(ref.named_modules())[name], dict(model.named_modules())[name]
            assert torch.allclose(r.running_mean, m.running_mean, atol=1e-6)
            assert torch.allclose(r.running_var, m.running_var, atol=1e-5)
            assert int(r.num_batches_tracked) == int(m.num_batches_tracked)
        x = x * 1.5 + 0.3
    ref.eval(), model.eval()
    assert (ref(x) - model(x)).abs().max().item() < 1e-5
    # gradients reach the conv weight and the BN affine parameters
    model.train(), ref.train()
    ref(x)  # the same running-statistics update on both
    model(x).square().mean().backward()
    assert model[0].weight.grad is not None and model[1].weight.grad is not None and model[1].bias.grad is not None
    for layer in pairs:
        unfold_bn_train(model, layer)
    assert type(model[0]) is nn.Conv2d and type(model[1]) is nn.BatchNorm2d
    model.eval(), ref.eval()
    assert (ref(x) - model(x)).abs().max().item() < 1e-5


def test_quantizer_sees_the_folded_weight_and_records_the_fold():
    torch.manual_seed(0)
    model = randomize_bn(small_cnn())
    expected = (model[0].weight * (model[1].weight / torch.sqrt(model[1].running_var + 1e-5)).view(-1, 1, 1, 1))
    recs = plan_layers(model, WrapConfig(fold_bn="train"), torch.zeros(1, 3, 6, 6))
    assert [(r.name, r.bn, r.fold_bn) for r in recs] == [
        ("0", "1", "train"), ("3", "4", "train"), ("7", "8", "train"), ("10", None, "none")
    ]  # fmt: skip
    assert LayerRecord.from_dict(recs[0].to_dict()) == recs[0]
    mods = apply_plan(model, recs, "bayesian_bits", BayesianBitsConfig())
    assert mods["0"].weight_quantizer.x_max.item() == pytest.approx(expected.abs().max().item(), rel=1e-6)


def test_export_apply_config_reproduces_folded_search():
    """A searched model with training-time folding and random gates -> export -> a fresh float model with the
    searched weights: ``apply_config`` folds the same pairs statically and gives the same eval logits."""
    torch.manual_seed(0)
    float_model = randomize_bn(small_cnn())
    model = copy.deepcopy(float_model)
    recs = plan_layers(model, WrapConfig(fold_bn="train"), torch.zeros(1, 3, 6, 6))
    mods = apply_plan(model, recs, "bayesian_bits", BayesianBitsConfig())
    x = torch.randn(8, 3, 6, 6)
    model.train()
    with torch.no_grad():
        model(x)  # calibrates input ranges, updates BN running statistics through the fold
    g = torch.Generator().manual_seed(1)
    for m in mods.values():  # random bit widths and pruning
        with torch.no_grad():
            q = m.weight_quantizer
            q.log_alpha.copy_(torch.randn(q.log_alpha.shape, generator=g) * 4)
            if q.prune_log_alpha is not None:
                q.prune_log_alpha.copy_(torch.randn(q.prune_log_alpha.shape, generator=g) * 2 + 1)
    model.eval()
    ref = model(x)
    config = MixedPrecisionConfig.from_dict(build_config(recs, mods, "bayesian_bits", 8, "Sequential").to_dict())
    assert config.model["bn_fold"] == {"0": {"bn": "1", "mode": "train"}, "3": {"bn": "4", "mode": "train"},
                                       "7": {"bn": "8", "mode": "train"}}  # fmt: skip
    fresh = small_cnn()
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all("_quantizer." in k for k in unexpected)
    apply_config(fresh, config).eval()
    assert isinstance(fresh[1], FoldedBatchNorm)
    assert (fresh(x) - ref).abs().max().item() < 1e-5


def test_bad_fold_requests_raise():
    model = small_cnn()
    with pytest.raises(BBConfigError, match="fold_bn"):
        WrapConfig(fold_bn="sometimes")
    with pytest.raises(BBConfigError, match="no module `nope`"):
        fold_bn_train(model, "0", "nope")
    with pytest.raises(BBConfigError, match="Cannot fold"):
        fold_bn_train(model, "0", "2")  # a ReLU is no BatchNorm
    with pytest.raises(BBConfigError, match="bn_fold"):
        MixedPrecisionConfig.from_dict(
            {"format": "bb_lightning.mixed_precision_config", "version": 1, "method": "x", "totals": {},
             "model": {"bn_fold": {"0": {"bn": "1", "mode": "later"}}},
             "layers": {"0": {"type": "Conv2d", "weight_shape": [1], "macs": 1, "quantized": False, "weight": None,
                              "input": None, "kept_channels": None, "bops": 0.0}}}
        )  # fmt: skip


def test_static_search_export_needs_a_folded_model():
    """With ``fold_bn="static"`` the searched weights already contain the BatchNorm: apply_config refuses an
    unfolded model (folding its fresh statistics would silently change the network) and accepts a folded one."""
    torch.manual_seed(0)
    model = randomize_bn(small_cnn())
    recs = plan_layers(model, WrapConfig(fold_bn="static"), torch.zeros(1, 3, 6, 6))
    mods = apply_plan(model, recs, "bayesian_bits", BayesianBitsConfig())
    assert isinstance(model[1], FoldedBatchNorm) and model[3].bias is not None
    x = torch.randn(4, 3, 6, 6)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    ref = model(x)
    config = build_config(recs, mods, "bayesian_bits", 8)
    with pytest.raises(BBConfigError, match="fold_bn='static'"):
        apply_config(small_cnn(), config)
    fresh = small_cnn()
    fold_pairs(fresh, {n: f["bn"] for n, f in config.model["bn_fold"].items()}, "static")
    fresh.load_state_dict(model.state_dict(), strict=False)
    apply_config(fresh, config).eval()
    assert (fresh(x) - ref).abs().max().item() < 1e-5
