"""Pieces shared by the registered toy-task models: timm's classifier interface."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class ClassifierMixin:
    """timm's classifier API on a model whose classifier is ``self.fc`` and whose features end in a flat vector."""

    fc: nn.Module
    num_classes: int
    num_features: int

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Any = None) -> None:
        """Replace the classifier by a fresh ``num_features -> num_classes`` linear (``nn.Identity`` for 0)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]
