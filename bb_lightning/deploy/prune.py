"""Physical removal of pruned output channels (placeholder until the decision logic lands)."""

from __future__ import annotations

from torch import Tensor, nn


def remove_pruned_channels(model: nn.Module, example: Tensor) -> list[dict]:
    return []
