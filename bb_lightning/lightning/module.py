"""``TimmClassifier``: a LightningModule around any timm image classifier, with the regulariser mixin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import timm
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from ..errors import BBConfigError
from .mixin import CostRegularizerMixin

_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("constant", "cosine")


class TimmClassifier(CostRegularizerMixin, pl.LightningModule):
    """Cross-entropy classification with ``timm.create_model(model_name, ...)``.

    Args:
        model_name: any timm model name (``timm.list_models()``).
        num_classes: classifier outputs.
        in_chans: input channels.
        input_size: per-sample input size ``(C, H, W)``; sets ``example_input_array`` (used to count MACs).
        pretrained: load timm's pretrained weights (needs them in the local cache or a download).
        checkpoint_path: load model weights from this local file instead.
        model_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``drop_rate``).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9, Nesterov) for the model weights.
        lr: learning rate of the model weights.
        weight_decay: weight decay of the model weights (quantizer parameters never get any).
        lr_schedule: ``"constant"`` or ``"cosine"`` (per epoch, to 0 at ``max_epochs``).
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: Sequence[int] = (3, 224, 224),
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
    ) -> None:
        super().__init__()
        if optimizer not in _OPTIMIZERS:
            raise BBConfigError(f"Expected argument `optimizer` to be one of {list(_OPTIMIZERS)}, got {optimizer!r}.")
        if lr_schedule not in _SCHEDULES:
            raise BBConfigError(f"Expected argument `lr_schedule` to be one of {list(_SCHEDULES)}, got {lr_schedule!r}.")
        if model_name not in timm.list_models() and not timm.is_model(model_name):
            raise BBConfigError(f"Unknown timm model {model_name!r}; see `timm.list_models()`.")
        self.save_hyperparameters()
        kwargs = dict(model_kwargs or {})
        if checkpoint_path:
            kwargs["checkpoint_path"] = checkpoint_path
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
        hp = self.hparams
        params = self.parameters()
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "cosine" and self.trainer is not None and self.trainer.max_epochs:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.max_epochs)
            return {"optimizer": opt, "lr_scheduler": sched}
        return opt
