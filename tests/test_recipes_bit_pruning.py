"""The BitPruning ImageNet recipes parse with the spec's settings and run 2 steps on 32x32 stand-in data."""

from __future__ import annotations

import pytest
from test_recipes import FAST, RECIPES, SMALL_IMAGENET, parse

from bb_lightning.app.cli import main

pytestmark = pytest.mark.timeout(600)

TARGETS = {"imagenet_resnet18_bit_pruning": 3.76, "imagenet_mobilenetv2_bit_pruning": 4.36}  # paper's abstract


@pytest.mark.parametrize("recipe", sorted(TARGETS))
def test_recipe_parses_with_the_paper_target(recipe, capsys):
    cfg = parse(recipe, capsys)
    bp = cfg["trainer"]["callbacks"][-1]
    assert bp["class_path"] == "bb_lightning.BitPruning"
    args = bp["init_args"]
    assert (args["regularizer"], args["target"], args["budget_mode"]) == ("average_bits", TARGETS[recipe], "hinge")
    assert (args["init_bits"], args["min_bits"], args["max_bits"], args["weight_granularity"]) == (8.0, 2.0, 8.0,
                                                                                                   "tensor")
    assert (args["first_layer"], args["last_layer"], args["bit_lr"]) == ("full", "full", 0.01)
    assert (args["warmup_epochs"], args["ramp_epochs"], args["finetune_epochs"]) == (1, 2, 8)
    assert cfg["trainer"]["max_epochs"] == 20 and cfg["model"]["pretrained"] is True
    assert (cfg["model"]["optimizer"], cfg["model"]["quantizer_optimizer"]) == ("sgd", "adam")
    text = (RECIPES / f"{recipe}.yaml").read_text()
    assert "3.76" in text and "4.36" in text and "4.13" in text  # the headline numbers in the header


@pytest.mark.lightning_fit
@pytest.mark.parametrize("recipe", sorted(TARGETS))
def test_recipe_runs_two_steps(recipe, tmp_path, capsys):
    main(["fit", "--config", str(RECIPES / f"{recipe}.yaml"), "--trainer.default_root_dir", str(tmp_path),
          *FAST, *SMALL_IMAGENET])
    out = capsys.readouterr().out
    assert "learned mixed-precision configuration (bit_pruning)" in out and "relative BOPs :" in out
