"""Every paper recipe parses with the spec's settings and runs 2 training steps on stand-in data (no download);
the fine-tuning recipe starts from the checkpoint of a 2-step search."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bb_lightning.app.cli import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
pytestmark = pytest.mark.timeout(600)

# recipe -> (model name, mu, gate init, optimizer, schedule, data class)
EXPECTED = {
    "mnist_lenet5": ("bb_lenet5", 0.1, [6.0, 6.0, -6.0, -6.0], "adam", "hold_linear", "MNISTDataModule"),
    "cifar10_vgg7": ("bb_vgg7", 0.01, 6.0, "adam", "hold_linear", "CIFAR10DataModule"),
    "imagenet_resnet18": ("resnet18.tv_in1k", 0.01, [6.0, 6.0, 6.0, -6.0], "sgd", "multistep", "ImageNetDataModule"),
    "imagenet_mobilenetv2": (
        "mobilenetv2_100.ra_in1k", 0.01, [6.0, 6.0, 6.0, -6.0], "sgd", "multistep", "ImageNetDataModule"
    ),
}

FAST = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
    "--trainer.num_sanity_val_steps", "0",
    "--trainer.accelerator", "cpu",
    "--trainer.devices", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--data.init_args.fake_size", "4",
    "--data.init_args.batch_size", "2",
]  # fmt: skip
SMALL_IMAGENET = [  # the ImageNet recipes at 32x32 (same networks, a 49x cheaper stand-in)
    "--model.pretrained", "false",
    "--model.input_size", "[3, 32, 32]",
    "--trainer.callbacks.init_args.input_size", "[3, 32, 32]",
    "--data.init_args.image_size", "32",
    "--data.init_args.resize_size", "36",
    "--data.init_args.num_workers", "0",
    "--data.init_args.pin_memory", "false",
]  # fmt: skip


def parse(recipe: str, capsys, *extra: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(RECIPES / f"{recipe}.yaml"), *extra, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_recipe_parses_with_paper_settings(recipe, capsys):
    cfg = parse(recipe, capsys)
    name, mu, gate_init, optimizer, schedule, data = EXPECTED[recipe]
    bb = cfg["trainer"]["callbacks"][-1]
    assert bb["class_path"] == "bb_lightning.BayesianBits"
    args = bb["init_args"]
    assert (args["mu"], args["gate_init"], args["prune_init"]) == (mu, gate_init, 6.0)
    assert (args["gate_lr"], args["range_lr"], args["fold_bn"], args["regularizer"]) == (1e-3, 1e-3, "train", "bops")
    model = cfg["model"]
    assert (model["model_name"], model["optimizer"], model["lr_schedule"]) == (name, optimizer, schedule)
    assert cfg["data"]["class_path"].endswith(data)
    if optimizer == "sgd":  # ImageNet: SGD 3e-3 Nesterov; Adam gates; MultiStep [10, 20] on all three (spec 3.8)
        assert (model["lr"], model["momentum"], model["nesterov"], model["quantizer_optimizer"]) == (
            0.003, 0.9, True, "adam"
        )
        assert (model["lr_milestones"], model["lr_gamma"], model["schedule_quantizer_lr"]) == ([10, 20], 0.1, True)
        assert cfg["trainer"]["max_epochs"] == 30 and model["pretrained"] is True
    else:  # MNIST/CIFAR: Adam 1e-3, LambdaLR on the weights only, 100 / 300 epochs
        assert (model["lr"], model["schedule_quantizer_lr"]) == (0.001, False)
        assert cfg["trainer"]["max_epochs"] == (100 if recipe.startswith("mnist") else 300)
        assert cfg["data"]["init_args"]["download"] is False and cfg["data"]["init_args"]["batch_size"] == 128


def test_strength_override_and_finetune_recipe_parse(capsys):
    cfg = parse("cifar10_vgg7", capsys, "--trainer.callbacks.init_args.mu", "0.1")
    assert cfg["trainer"]["callbacks"][-1]["init_args"]["mu"] == 0.1
    cfg = parse("finetune_fixed", capsys)
    ft = cfg["trainer"]["callbacks"][-1]
    assert ft["class_path"] == "bb_lightning.plugin.finetune.FixedGateFinetune"
    assert ft["init_args"]["range_lr"] == 1e-4
    model = cfg["model"]
    assert (model["optimizer"], model["lr"], model["lr_schedule"], model["lr_interval"]) == (
        "sgd", 1e-4, "cosine", "step"
    )
    assert model["schedule_quantizer_lr"] is True and cfg["trainer"]["max_epochs"] == 10


def run(recipe: str, root: Path, capsys, *extra: str) -> str:
    main(["fit", "--config", str(RECIPES / f"{recipe}.yaml"), "--trainer.default_root_dir", str(root), *FAST, *extra])
    out = capsys.readouterr().out
    assert "==== bb_lightning result ====" in out and "relative BOPs :" in out
    return out


@pytest.mark.lightning_fit
@pytest.mark.parametrize("recipe", ["mnist_lenet5", "imagenet_resnet18", "imagenet_mobilenetv2"])
def test_recipe_runs_two_steps(recipe, tmp_path, capsys):
    extra = SMALL_IMAGENET if recipe.startswith("imagenet") else []
    out = run(recipe, tmp_path, capsys, *extra)
    if recipe == "mnist_lenet5":
        assert "relative BOPs : 6.250% of w32a32" in out  # w8a8 after 2 steps (gates at 6 barely move)
    assert list(tmp_path.rglob("last.ckpt"))


@pytest.mark.lightning_fit
def test_cifar_search_then_finetune_from_its_checkpoint(tmp_path, capsys):
    run("cifar10_vgg7", tmp_path / "search", capsys)
    (ckpt,) = (tmp_path / "search").rglob("last.ckpt")
    out = run(
        "finetune_fixed", tmp_path / "finetune", capsys,
        "--trainer.callbacks.init_args.search_checkpoint", str(ckpt),
        "--model.model_name", "bb_vgg7",
        "--model.num_classes", "10",
        "--model.input_size", "[3, 32, 32]",
        "--data", "bb_lightning.app.datasets.CIFAR10DataModule",
        "--data.init_args.fake_size", "4",
        "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0",  # jsonargparse keeps the recipe's ImageNet value otherwise
        "--data.init_args.data_dir", str(tmp_path),
    )  # fmt: skip
    assert "fixed by the search" in out
    assert list((tmp_path / "finetune").rglob("last.ckpt"))


def test_every_recipe_is_covered_and_digits_stay_the_default_data(capsys):
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(
        [*EXPECTED, "finetune_fixed", "digits_bayesian_bits", "digits_bit_pruning", "imagenet_resnet18_bit_pruning",
         "imagenet_mobilenetv2_bit_pruning", "sweep_strength"]
    )
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["class_path"] == "bb_lightning.app.data.DigitsDataModule"
