"""``TimmClassifier``: a LightningModule around any timm image classifier, with the regulariser mixin."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import timm
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from .._validate import fail
from ..errors import BBConfigError
from ..plugin.mixin import CostRegularizerMixin
from .optim import SCHEDULES, GroupLambdaLR, LRSchedule, SplitOptimizer

_OPTIMIZERS = ("adam", "adamw", "sgd")
_QUANTIZER_OPTIMIZERS = ("adam", "same")
_INTERVALS = ("epoch", "step")


class TimmClassifier(CostRegularizerMixin, pl.LightningModule):
    """Cross-entropy classification with ``timm.create_model(model_name, ...)``.

    Args:
        model_name: any timm model name (``timm.list_models()``).
        num_classes: classifier outputs.
        in_chans: input channels.
        input_size: per-sample input size ``(C, H, W)``; sets ``example_input_array`` (used to count MACs).
        pretrained: load timm's pretrained weights (from the local cache, or a download if allowed).
        checkpoint_path: load model weights from this local file (timm ``checkpoint_path``: a state dict for
            exactly this architecture and ``num_classes``).
        pretrained_file: load timm's pretrained weights from this local file (timm ``pretrained=True`` with
            ``pretrained_cfg_overlay=dict(file=...)``: the classifier is adapted if ``num_classes`` differs).
        model_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``drop_rate``).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` for the model weights (and BatchNorm parameters).
        lr: learning rate of the model weights.
        weight_decay: weight decay of the model weights (quantizer parameters never get any).
        momentum: SGD momentum.
        nesterov: SGD with Nesterov momentum (the reference's ImageNet setting).
        quantizer_optimizer: ``"adam"``: the quantization callback's gate and range groups (own LRs, ``gate_lr`` /
            ``range_lr``) are optimized by Adam even when the weights use SGD (spec 2.7, 3.8; a `SplitOptimizer`);
            ``"same"``: by the weights' optimizer.
        lr_schedule: ``"constant"``, ``"cosine"`` (to 0 at the end of training), ``"hold_linear"`` (the reference's
            MNIST/CIFAR schedule: constant for the first two thirds, then linear decay) or ``"multistep"``
            (times ``lr_gamma`` at each of ``lr_milestones``); see `bb_lightning.app.optim.LRSchedule`.
        lr_interval: step the schedule every ``"epoch"`` or every optimizer ``"step"``.
        lr_milestones: epochs (or steps) of the ``multistep`` decay.
        lr_gamma: factor of the ``multistep`` decay.
        schedule_quantizer_lr: apply the schedule to the gate and range groups too (reference: ImageNet yes,
            MNIST/CIFAR no).
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: Sequence[int] = (3, 224, 224),
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        pretrained_file: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        nesterov: bool = True,
        quantizer_optimizer: str = "adam",
        lr_schedule: str = "constant",
        lr_interval: str = "epoch",
        lr_milestones: Sequence[int] = (10, 20),
        lr_gamma: float = 0.1,
        schedule_quantizer_lr: bool = False,
    ) -> None:
        super().__init__()
        for name, value, choices in (
            ("optimizer", optimizer, _OPTIMIZERS),
            ("quantizer_optimizer", quantizer_optimizer, _QUANTIZER_OPTIMIZERS),
            ("lr_schedule", lr_schedule, SCHEDULES),
            ("lr_interval", lr_interval, _INTERVALS),
        ):
            if value not in choices:
                raise fail(name, f"one of {list(choices)}", value)
        if model_name not in timm.list_models() and not timm.is_model(model_name):
            raise BBConfigError(f"Unknown timm model {model_name!r}; see `timm.list_models()`.")
        for name in ("checkpoint_path", "pretrained_file"):
            path = locals()[name]
            if path and not os.path.isfile(path):
                raise BBConfigError(f"`{name}`: no such file {path!r}.")
        self.save_hyperparameters()
        kwargs = dict(model_kwargs or {})
        if checkpoint_path:
            kwargs["checkpoint_path"] = checkpoint_path
        if pretrained_file:
            pretrained = True
            kwargs["pretrained_cfg_overlay"] = {**kwargs.get("pretrained_cfg_overlay", {}), "file": pretrained_file}
        self.model = timm.create_model(
            model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
        )
        self.example_input_array = torch.zeros(1, *input_size)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.log("test/loss", F.cross_entropy(logits, y))
        self.log("test/acc", self.test_acc)

    def configure_optimizers(self) -> Any:
        """The weights' optimizer (a `SplitOptimizer` with Adam for the quantizer groups when the weights use SGD
        and ``quantizer_optimizer="adam"``) and, unless ``lr_schedule="constant"``, a `GroupLambdaLR`."""
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay
            )
            if hp.quantizer_optimizer == "adam":
                opt = SplitOptimizer(opt, lambda groups: torch.optim.Adam(groups))
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return opt
        if hp.lr_interval == "step":
            total = int(self.trainer.estimated_stepping_batches)
        else:
            total = int(self.trainer.max_epochs or 0)
            if total < 1:
                raise BBConfigError(
                    f"`lr_schedule={hp.lr_schedule!r}` per epoch needs `Trainer(max_epochs=...)`; set it, or "
                    "`lr_interval: step`."
                )
        schedule = LRSchedule(hp.lr_schedule, total, tuple(hp.lr_milestones), hp.lr_gamma)
        sched = GroupLambdaLR(opt, schedule, hp.schedule_quantizer_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": hp.lr_interval}}
