"""Fixed-gate fine-tuning (spec 5.4) from a search checkpoint or an exported config."""

from __future__ import annotations

import pytest
import torch
from helpers import digits, tiny_module, trainer

from bb_lightning import BayesianBits, MixedPrecisionConfig
from bb_lightning.errors import BBConfigError
from bb_lightning.plugin.finetune import FixedGateFinetune
from bb_lightning.plugin.state import get_state
from bb_lightning.methods.fixed import FixedQuantizer
from bb_lightning.wrap.bn_fold import FoldedBatchNorm

pytestmark = pytest.mark.lightning_fit


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A 2-step search with training-time BN folding; random gates so bits and masks are non-trivial."""
    tmp = tmp_path_factory.mktemp("search")
    torch.manual_seed(0)
    model = tiny_module()
    bb = BayesianBits(strength=0.01, fold_bn="train", export_path=str(tmp / "config.json"))
    trainer(tmp, [bb], limit_train_batches=2).fit(model, datamodule=digits())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for q in get_state(model).quantizers():
            q.log_alpha.copy_(torch.randn(q.log_alpha.shape, generator=g) * 3)
            if q.prune_log_alpha is not None:
                q.prune_log_alpha.copy_(torch.randn(q.prune_log_alpha.shape, generator=g) * 2 + 1)
    model.trainer.save_checkpoint(tmp / "search.ckpt")
    torch.save(model.model.state_dict(), tmp / "weights.pth")  # a plain state dict (with quantizer entries)
    get_state(model).export().save(tmp / "config.json", overwrite=True)  # replaces the fit-end export
    x = torch.randn(8, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return tmp, x, logits


def _check_fixed(module, x, logits):
    assert get_state(module) is None  # no gates, no regulariser
    qs = [m for m in module.modules() if isinstance(m, FixedQuantizer)]
    assert qs and any(q.keep is not None for q in qs)
    assert any(isinstance(m, FoldedBatchNorm) for m in module.modules())  # BN folded statically
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    module.eval()
    with torch.no_grad():
        assert (module(x) - logits).abs().max().item() < 1e-5  # the conversion is lossless


def test_finetune_from_search_checkpoint(search, tmp_path):
    tmp, x, logits = search
    module = tiny_module(optimizer="sgd", lr=1e-4, lr_schedule="cosine", lr_interval="step",
                         schedule_quantizer_lr=True)  # fmt: skip
    ft = FixedGateFinetune(search_checkpoint=str(tmp / "search.ckpt"), range_lr=1e-4)
    t = trainer(tmp_path, [ft], limit_train_batches=2)
    ft.setup(t, module, "validate")
    _check_fixed(module, x, logits)
    assert ft.config.totals == pytest.approx(MixedPrecisionConfig.load(tmp / "config.json").totals)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    t.fit(module, datamodule=digits())
    (opt,) = t.optimizers
    groups = {g.get("bb_lightning", "weights"): g for g in opt.param_groups}
    assert set(groups) == {"weights", "ranges"}
    assert type(opt.optimizers[1]).__name__ == "Adam"
    ranges = {id(p) for p in groups["ranges"]["params"]}
    assert all(n.endswith("x_max") for n, p in module.named_parameters() if id(p) in ranges)
    assert groups["weights"]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine to 0 over the 2 steps
    assert groups["ranges"]["lr"] == pytest.approx(0.0, abs=1e-12)
    changed = [n for n, p in module.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.endswith("x_max") for n in changed) and any(n.endswith("weight") for n in changed)


@pytest.mark.parametrize("weights", ["search.ckpt", "weights.pth"])
def test_finetune_from_exported_config_and_weights(search, weights):
    tmp, x, logits = search
    module = tiny_module()
    ft = FixedGateFinetune(config=str(tmp / "config.json"), weights=str(tmp / weights))
    ft.setup(None, module, "validate")  # type: ignore[arg-type]
    _check_fixed(module, x, logits)


def test_train_allocation_from_scratch_with_data_ranges(search, tmp_path):
    """``ranges="data"``: the searched widths and masks on the model's fresh weights, ranges in their own group."""
    tmp, x, _ = search
    config = MixedPrecisionConfig.load(tmp / "config.json")
    module = tiny_module(lr_schedule="cosine", lr_interval="step")
    fresh = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    ft = FixedGateFinetune(config=str(tmp / "config.json"), ranges="data", range_lr=3e-3)
    t = trainer(tmp_path, [ft], limit_train_batches=2)
    t.fit(module, datamodule=digits())
    layers = dict(module.model.named_modules())
    for name, spec in config.layers.items():
        if not spec["quantized"]:
            continue
        wq = layers[name].weight_quantizer
        assert wq.hard_bits() == (spec["weight"]["bits"] if spec["kept_channels"] != [] else 0), name
        assert wq._initialized and wq._signed, name
        # calibrated on the fresh weights (+ 2 steps), not the searched range
        assert float(wq.x_max) != pytest.approx(spec["weight"]["range"][1], rel=1e-3), name
    assert not any(isinstance(m, FoldedBatchNorm) for m in module.modules())  # folded for training, still BN
    (opt,) = t.optimizers
    groups = {g.get("bb_lightning", "weights"): g for g in opt.param_groups}
    assert set(groups) == {"weights", "ranges"}
    assert groups["ranges"]["lr"] == pytest.approx(3e-3) and groups["ranges"]["weight_decay"] == 0
    assert groups["weights"]["lr"] == pytest.approx(0.0, abs=1e-12)  # the weights' cosine schedule only
    assert any(not torch.equal(p, fresh[n]) for n, p in module.model.named_parameters() if n in fresh)
    with pytest.raises(BBConfigError, match="ranges"):
        FixedGateFinetune(config=str(tmp / "config.json"), ranges="searched")


def test_finetune_errors(search, tmp_path):
    tmp, _, _ = search
    with pytest.raises(BBConfigError, match="exactly one starting point"):
        FixedGateFinetune()
    with pytest.raises(BBConfigError, match="exactly one starting point"):
        FixedGateFinetune(search_checkpoint="a.ckpt", config="b.json")
    with pytest.raises(BBConfigError, match="range_lr"):
        FixedGateFinetune(search_checkpoint="a.ckpt", range_lr=0)
    with pytest.raises(BBConfigError, match="no such file"):
        FixedGateFinetune(search_checkpoint=str(tmp_path / "missing.ckpt")).setup(None, tiny_module(), "fit")
    torch.save({"state_dict": tiny_module().state_dict()}, tmp_path / "plain.ckpt")
    with pytest.raises(BBConfigError, match="not a checkpoint of a search"):
        FixedGateFinetune(search_checkpoint=str(tmp_path / "plain.ckpt")).setup(None, tiny_module(), "fit")
    with pytest.raises(BBConfigError, match="weight shape"):
        FixedGateFinetune(search_checkpoint=str(tmp / "search.ckpt")).setup(None, tiny_module(num_classes=5), "fit")
