"""Find a finished run's exported config and checkpoint, and rebuild its float model with the trained weights.

Understands runs of `bb_lightning`'s CLI (``TimmClassifier``: the checkpoint's hyper-parameters name the timm
model; the model lives under the LightningModule attribute ``model``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ._api import BBConfigError, MixedPrecisionConfig, fold_pairs

CONFIG_GLOB = "mixed_precision_config*.json"
_CONFIG_NAME = re.compile(r"mixed_precision_config(-v\d+)?\.json")  # not the ``.metrics.json`` sidecar


@dataclass
class RunFiles:
    """The files of one run: ``config`` (JSON) and ``checkpoint`` (Lightning ``.ckpt``)."""

    config: Path
    checkpoint: Path


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def find_run_files(target: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> RunFiles:
    """``target``: a run / log directory (the newest exported config below it) or a config JSON; the checkpoint is
    ``checkpoint`` or the newest ``.ckpt`` (``last.ckpt`` first) under the config's folder."""
    target = Path(target)
    if target.is_dir():
        config = _newest(sorted(p for p in target.rglob(CONFIG_GLOB) if _CONFIG_NAME.fullmatch(p.name)))
        if config is None:
            raise BBConfigError(f"No exported config ({CONFIG_GLOB}) under {target}; did the run finish?")
    elif target.is_file():
        config = target
    else:
        raise BBConfigError(f"{target}: no such run directory or config file.")
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise BBConfigError(f"--checkpoint: no such file {ckpt}.")
    else:
        found = sorted(config.parent.rglob("*.ckpt"))
        last = [p for p in found if p.name == "last.ckpt"]
        ckpt = _newest(last) or _newest(found)
        if ckpt is None:
            raise BBConfigError(
                f"No checkpoint (*.ckpt) under {config.parent} next to {config.name}. HINT: pass --checkpoint PATH "
                "(a Lightning checkpoint of the run)."
            )
    return RunFiles(config, ckpt)


def load_run_model(files: RunFiles, config: MixedPrecisionConfig) -> tuple[nn.Module, Tensor]:
    """The run's float timm model with the checkpoint's weights, and an example input ``[1, C, H, W]``."""
    import timm

    data = torch.load(files.checkpoint, map_location="cpu", weights_only=False)
    hp = data.get("hyper_parameters", {}) if isinstance(data, dict) else {}
    if "model_name" not in hp:
        raise BBConfigError(
            f"{files.checkpoint}: no `model_name` hyper-parameter, so the model cannot be rebuilt here. HINT: use the "
            "Python API, `bb_lightning.export_onnx(model, config, path, example_input)`."
        )
    kwargs = dict(hp.get("model_kwargs") or {})
    kwargs.pop("checkpoint_path", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    model = timm.create_model(hp["model_name"], pretrained=False, num_classes=hp.get("num_classes", 10),
                              in_chans=hp.get("in_chans", 3), **kwargs)
    folds = {k: v["bn"] for k, v in (config.model.get("bn_fold") or {}).items() if v["mode"] == "static"}
    fold_pairs(model, folds, "static")  # a static-fold search saved folded weights and no BatchNorm parameters
    state = data.get("state_dict", data)
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    wanted = model.state_dict()
    missing = sorted(k for k in wanted if k not in weights)
    if missing:
        raise BBConfigError(f"{files.checkpoint}: no weights for {missing[:5]} of `{hp['model_name']}`.")
    model.load_state_dict({k: weights[k] for k in wanted}, strict=True)
    size = hp.get("input_size") or [model.pretrained_cfg.get("input_size", (3, 224, 224))][0]
    return model.eval(), torch.zeros(1, *size)
