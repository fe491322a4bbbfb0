"""The `bb-lightning` console script on the default recipe (shortened)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bb_lightning import MixedPrecisionConfig
from bb_lightning.app.cli import main

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "digits_bayesian_bits.yaml"

pytestmark = pytest.mark.timeout(300)


def test_print_config_parses_recipe(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(RECIPE), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    (cb,) = printed["trainer"]["callbacks"]
    assert cb["class_path"] == "bb_lightning.BayesianBits"
    assert cb["init_args"]["regularizer"] == "bops"
    assert printed["model"]["model_name"] == "resnet10t"


def test_fit_prints_result_and_exports(tmp_path, capsys):
    main([
        "fit", "--config", str(RECIPE),
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "3",
        "--trainer.limit_val_batches", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks.init_args.finetune_epochs", "1",
        "--model.model_name", "test_resnet",
    ])
    out = capsys.readouterr().out
    assert "learned mixed-precision configuration" in out
    assert "test accuracy :" in out and "relative BOPs :" in out
    path = Path(out.split("config        : ")[1].split()[0])
    assert path.exists() and path.is_relative_to(tmp_path)
    cfg = MixedPrecisionConfig.load(path)
    assert f"{100 * cfg.totals['relative_bops']:.3f}%" in out
    assert (path.parent / "config.yaml").exists()  # LightningCLI saved the run's config next to it


def test_bad_model_name_is_reported():
    with pytest.raises((SystemExit, ValueError)):
        main(["fit", "--config", str(RECIPE), "--model.model_name", "not_a_model", "--trainer.max_epochs", "1"])
