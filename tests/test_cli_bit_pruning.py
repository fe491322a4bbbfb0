"""The `bb-lightning` console script on the BitPruning digits recipe (shortened)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bb_lightning import MixedPrecisionConfig
from bb_lightning.app.cli import main

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "digits_bit_pruning.yaml"

pytestmark = pytest.mark.timeout(300)


def test_print_config_parses_recipe(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(RECIPE), "--print_config", "--trainer.callbacks.init_args.target", "0.015625"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    (cb,) = printed["trainer"]["callbacks"]
    assert cb["class_path"] == "bb_lightning.BitPruning"
    assert cb["init_args"]["regularizer"] == "bops" and cb["init_args"]["target"] == 0.015625
    assert cb["init_args"]["finetune_epochs"] == 5


def test_fit_prints_result_and_exports_integer_bitlengths(tmp_path, capsys):
    main([
        "fit", "--config", str(RECIPE),
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "3",
        "--trainer.limit_val_batches", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks.init_args.finetune_epochs", "1",
        "--trainer.callbacks.init_args.warmup_epochs", "0",
        "--trainer.callbacks.init_args.ramp_epochs", "0",
        "--trainer.callbacks.init_args.strength", "5.0",
        "--trainer.callbacks.init_args.bit_lr", "0.6",
        "--model.model_name", "test_resnet",
    ])
    out = capsys.readouterr().out
    assert "learned mixed-precision configuration (bit_pruning)" in out and "test accuracy :" in out
    path = Path(out.split("config        : ")[1].split()[0])
    cfg = MixedPrecisionConfig.load(path)
    assert cfg.method == "bit_pruning"
    bits = [layer["weight"]["bits"] for layer in cfg.layers.values() if layer["quantized"]]
    assert all(isinstance(b, int) and 2 <= b <= 8 for b in bits) and min(bits) < 8
