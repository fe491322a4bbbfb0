"""The callback itself (Trainer.fit) on architectures with special layers; the full matrix is tests/wrap."""

from __future__ import annotations

import pytest
import torch
from helpers import digits, trainer

from bb_lightning import BayesianBits, BitPruning, apply_config
from bb_lightning.app.module import TimmClassifier
from bb_lightning.plugin.state import get_state
from bb_lightning.wrap.layers import QuantizedLayer

pytestmark = [pytest.mark.lightning_fit, pytest.mark.timm_models, pytest.mark.timeout(300)]

ARCHS = {
    "test_vit": {"img_size": 32},  # attention blocks: timm Linear on tokens
    "test_nfnet": {},  # ScaledStdConv2d
    "tf_mobilenetv3_small_minimal_100": {},  # Conv2dSame
    "test_convnext": {},  # channels-last Linear
    "test_efficientnet": {},  # depthwise + SE
}


METHODS = {
    "bayesian_bits": lambda path: BayesianBits(strength=0.1, gate_init=0.0, export_path=path),
    # per-channel bitlengths, moved off the integers by a large bit LR so both grids of each site are exercised
    "bit_pruning": lambda path: BitPruning(
        strength=1.0, bit_lr=0.3, init_bits=6.5, weight_granularity="channel", export_path=path
    ),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", sorted(ARCHS))
def test_callback_fit_export_apply(tmp_path, name, method):
    model = TimmClassifier(
        model_name=name, num_classes=10, in_chans=3, input_size=(3, 32, 32), model_kwargs=ARCHS[name]
    )
    cb = METHODS[method](str(tmp_path / "bits.json"))
    trainer(tmp_path, [cb], limit_train_batches=2, limit_val_batches=1).fit(
        model, datamodule=digits(channels=3, image_size=32)
    )
    state = get_state(model)
    wrapped = {n for n, m in model.model.named_modules() if isinstance(m, QuantizedLayer)}
    assert wrapped == {r.name for r in state.records if r.wrapped} and wrapped
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all(), f"non-finite {n}"
    fresh = TimmClassifier(**model.hparams).model
    fresh.load_state_dict({k: v for k, v in model.model.state_dict().items() if "quantizer" not in k})
    apply_config(fresh, cb.config_path)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-5)
