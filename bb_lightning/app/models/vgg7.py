"""VGG-7 as used for CIFAR-10 in Bayesian Bits (spec 8.2), registered in timm as ``bb_vgg7``.

Six 3x3 convolutions (128, 128, M, 256, 256, M, 512, 512, M; padding 1, no bias) each followed by BatchNorm and
ReLU, then linear 8192->1024 (no bias) + BatchNorm1d + ReLU and linear 1024->10. No dropout, PyTorch's default init;
615 917 568 MACs per 3x32x32 image.
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from ._common import ClassifierMixin

#: Output channels of the six convolutions; "M" is a 2x2 max-pool.
VGG7_LAYOUT: tuple[int | str, ...] = (128, 128, "M", 256, 256, "M", 512, 512, "M")


class VGG7(ClassifierMixin, nn.Module):
    """VGG-7 for 32x32 inputs.

    Args:
        num_classes: classifier outputs (0: no classifier, ``forward`` returns the 1024 features).
        in_chans: input channels.
        drop_rate: accepted for timm compatibility; the paper's network has no dropout, so it must be 0.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0, **kwargs: Any) -> None:
        super().__init__()
        if drop_rate:
            raise ValueError(f"VGG-7 (spec 8.2) has no dropout; got drop_rate={drop_rate}.")
        self.num_features = 1024
        layers: list[nn.Module] = []
        c = in_chans
        for v in VGG7_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = int(v)
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                c = out
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(512 * 4 * 4, 1024, bias=False)
        self.bn1 = nn.BatchNorm1d(1024)
        self.act = nn.ReLU(inplace=True)
        self.reset_classifier(num_classes)  # sets num_classes and fc

    def forward_features(self, x: Tensor) -> Tensor:
        """``[N, in_chans, 32, 32] -> [N, 1024]``."""
        return self.act(self.bn1(self.fc1(self.features(x).flatten(1))))


default_cfgs = generate_default_cfgs(
    {
        "bb_vgg7.untrained": {
            "url": "",
            "num_classes": 10,
            "input_size": (3, 32, 32),
            "mean": (0.4914, 0.4822, 0.4465),  # spec 8.5 (the reference's CIFAR-10 statistics)
            "std": (0.2023, 0.1994, 0.2010),
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "first_conv": "features.0",
            "classifier": "fc",
        }
    }
)


@register_model
def bb_vgg7(pretrained: bool = False, **kwargs: Any) -> VGG7:
    """VGG-7 for CIFAR-10 (spec 8.2); ``pretrained=True`` needs ``pretrained_cfg_overlay=dict(file=...)``."""
    return build_model_with_cfg(VGG7, "bb_vgg7", pretrained, **kwargs)
