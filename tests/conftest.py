"""Shared fixtures: deterministic seeds, 2 CPU threads, offline W&B, a tiny timm LightningModule."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
TORCH_DEVICE = os.environ.get("TORCH_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
