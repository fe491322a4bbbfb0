"""The Bayesian Bits paper's toy-task networks as timm models (registered on ``import bb_lightning``).

``timm.create_model("bb_lenet5")`` (MNIST) and ``timm.create_model("bb_vgg7")`` (CIFAR-10) build the networks of the
Bayesian Bits spec, section 8; they take timm's usual ``num_classes``, ``in_chans``, ``pretrained`` (with
``pretrained_cfg_overlay=dict(file=...)``) and ``checkpoint_path`` arguments.
"""

from .lenet5 import LeNet5 as LeNet5
from .vgg7 import VGG7 as VGG7

__all__ = ["LeNet5", "VGG7"]
