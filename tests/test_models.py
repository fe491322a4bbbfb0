"""The paper's toy networks as timm models: creation, shapes, timm's pretrained/checkpoint loading (local files)."""

from __future__ import annotations

import pytest
import timm
import torch

import bb_lightning  # noqa: F401  (registers the models)
from bb_lightning.errors import BBConfigError
from bb_lightning.app.module import TimmClassifier


@pytest.mark.parametrize(("name", "size"), [("bb_lenet5", (1, 28, 28)), ("bb_vgg7", (3, 32, 32))])
def test_create_like_any_timm_model(name, size):
    assert name in timm.list_models("bb_*")
    model = timm.create_model(name)
    assert model.pretrained_cfg["input_size"] == size and model.pretrained_cfg["num_classes"] == 10
    assert model(torch.zeros(2, *size)).shape == (2, 10)
    assert model.forward_head(model.forward_features(torch.zeros(2, *size)), pre_logits=True).shape[1] == (
        model.num_features
    )
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3
    assert timm.create_model(name, num_classes=100)(torch.zeros(2, *size)).shape == (2, 100)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    with pytest.raises(ValueError, match="no dropout"):
        timm.create_model(name, drop_rate=0.5)


def test_vgg7_layout():
    model = timm.create_model("bb_vgg7")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 256, 256, 512, 512]
    assert all(c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert model.fc1.bias is None and model.bn1.num_features == 1024 and model.fc.bias is not None


def test_pretrained_from_local_file_and_checkpoint_path(tmp_path):
    src = timm.create_model("bb_lenet5")
    path = tmp_path / "lenet5.pth"
    torch.save(src.state_dict(), path)
    a = timm.create_model("bb_lenet5", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    b = timm.create_model("bb_lenet5", checkpoint_path=str(path))
    c = TimmClassifier("bb_lenet5", num_classes=10, in_chans=1, input_size=(1, 28, 28), pretrained_file=str(path))
    d = TimmClassifier("bb_lenet5", num_classes=10, in_chans=1, input_size=(1, 28, 28), checkpoint_path=str(path))
    for m in (a, b, c.model, d.model):
        assert torch.equal(m.conv2.weight, src.conv2.weight) and torch.equal(m.fc.bias, src.fc.bias)
    with pytest.raises(BBConfigError, match="no such file"):
        TimmClassifier("bb_lenet5", pretrained_file=str(tmp_path / "missing.pth"))
