"""LeNet-5 as used for MNIST in Bayesian Bits (spec 8.1), registered in timm as ``bb_lenet5``.

Conv 5x5 1->32 + ReLU, max-pool 2, conv 5x5 32->64 + ReLU, max-pool 2, flatten (64*4*4 = 1024), linear 1024->512 +
ReLU, linear 512->10. No BatchNorm, every layer has a bias; 4 267 008 MACs per 1x28x28 image.

>>> import timm, bb_lightning, torch
>>> timm.create_model("bb_lenet5")(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from ._common import ClassifierMixin


class LeNet5(ClassifierMixin, nn.Module):
    """LeNet-5 for 28x28 inputs.

    Args:
        num_classes: classifier outputs (0: no classifier, ``forward`` returns the 512 features).
        in_chans: input channels.
        drop_rate: accepted for timm compatibility; the paper's network has no dropout, so it must be 0.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, drop_rate: float = 0.0, **kwargs: Any) -> None:
        super().__init__()
        if drop_rate:
            raise ValueError(f"LeNet-5 (spec 8.1) has no dropout; got drop_rate={drop_rate}.")
        self.num_features = 512
        self.conv1 = nn.Conv2d(in_chans, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(64 * 4 * 4, 512)
        self.reset_classifier(num_classes)  # sets num_classes and fc

    def forward_features(self, x: Tensor) -> Tensor:
        """``[N, in_chans, 28, 28] -> [N, 512]``."""
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        return self.act(self.fc1(x.flatten(1)))


default_cfgs = generate_default_cfgs(
    {
        "bb_lenet5.untrained": {
            "url": "",
            "num_classes": 10,
            "input_size": (1, 28, 28),
            "mean": (0.0,),  # spec 8.5: MNIST pixels in [0, 1], not normalised
            "std": (1.0,),
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "first_conv": "conv1",
            "classifier": "fc",
        }
    }
)


@register_model
def bb_lenet5(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """LeNet-5 for MNIST (spec 8.1); ``pretrained=True`` needs ``pretrained_cfg_overlay=dict(file=...)``."""
    return build_model_with_cfg(LeNet5, "bb_lenet5", pretrained, **kwargs)
