"""The Fashion-MNIST recipes parse with their settings and train 2 steps (stand-in data: no dependency on the files)."""

from __future__ import annotations

import pytest

from tests.test_recipes import FAST, parse, run

pytestmark = pytest.mark.timeout(600)


def test_lenet5_recipe_has_the_papers_mnist_protocol(capsys):
    cfg = parse("fashion_mnist_lenet5", capsys)
    args = cfg["trainer"]["callbacks"][-1]["init_args"]
    assert (args["mu"], args["gate_init"], args["gate_lr"], args["range_lr"]) == (
        0.1, [6.0, 6.0, -6.0, -6.0], 0.001, 0.001
    )
    model = cfg["model"]
    assert (model["model_name"], model["optimizer"], model["lr"], model["lr_schedule"]) == (
        "bb_lenet5", "adam", 0.001, "hold_linear"
    )
    assert cfg["trainer"]["max_epochs"] == 100
    data = cfg["data"]
    assert data["class_path"].endswith("FashionMNISTDataModule")
    assert (
        data["init_args"]["batch_size"] == 128 and data["init_args"]["data_dir"] == "/usr/share/datasets/fashion-mnist"
    )


def test_timm_recipe_uses_the_length_derived_defaults(capsys):
    cfg = parse("fashion_mnist_resnet10t", capsys)
    args = cfg["trainer"]["callbacks"][-1]["init_args"]
    assert args["gate_lr"] is None and args["gate_init"] is None  # derived from the run's length
    assert cfg["model"]["model_name"] == "resnet10t"


@pytest.mark.lightning_fit
@pytest.mark.parametrize("recipe", ["fashion_mnist_lenet5", "fashion_mnist_resnet10t"])
def test_fashion_recipe_runs_two_steps(recipe, tmp_path, capsys):
    out = run(recipe, tmp_path, capsys, "--trainer.callbacks.init_args.finetune_epochs", "0")
    assert "test accuracy :" in out
    assert list(tmp_path.rglob("last.ckpt"))
    assert "--data.init_args.fake_size" in FAST
