"""`bb-lightning fit` with a WandbLogger (run config, test-metrics sidecar), `bb-lightning report` on the configs
that real fits exported, and the W&B sweep recipe."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import digits, tiny_module, trainer
from PIL import Image
from wandb_records import read_offline_run

from bb_lightning import BayesianBits, MixedPrecisionConfig
from bb_lightning.app.cli import main
from bb_lightning.plugin.state import get_state
from bb_lightning.app.report import layer_rows, read_accuracy, sidecar_path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "digits_bayesian_bits.yaml"
SWEEP = ROOT / "recipes" / "sweep_strength.yaml"

pytestmark = [pytest.mark.lightning_fit, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One short `bb-lightning fit` of the default recipe on the digits, logging to an offline W&B run."""
    wandb = pytest.importorskip("wandb")
    tmp = tmp_path_factory.mktemp("cli_run")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_DATA_DIR", str(tmp / "wandb_data"))
    mp.setenv("WANDB_CACHE_DIR", str(tmp / "wandb_cache"))
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    try:
        with redirect_stdout(out):
            main([
                "fit", "--config", str(RECIPE),
                "--trainer.default_root_dir", str(tmp),
                "--trainer.max_epochs", "2",
                "--trainer.limit_train_batches", "3",
                "--trainer.limit_val_batches", "2",
                "--trainer.limit_test_batches", "3",
                "--trainer.enable_progress_bar", "false",
                "--trainer.callbacks.init_args.finetune_epochs", "1",
                "--trainer.callbacks.init_args.mu", "0.07",
                "--model.model_name", "test_resnet",
                "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
                f"--trainer.logger.init_args.save_dir={tmp}",
                "--trainer.logger.init_args.offline=true",
                "--trainer.logger.init_args.project=bb-test",
            ])
    finally:
        wandb.finish()
        mp.undo()
    text = out.getvalue()
    path = Path(text.split("config        : ")[1].split()[0])
    return {"dir": tmp, "out": text, "config": path}


def test_cli_writes_metrics_sidecar_and_wandb_run_config(cli_run):
    text, path = cli_run["out"], cli_run["config"]
    # a W&B logger shares its save_dir between runs: the export goes to a per-run folder there
    assert path.parent == cli_run["dir"] / "bb_lightning" / "version_0" and path.exists()
    side = sidecar_path(path)
    assert side.name == "mixed_precision_config.metrics.json" and f"test metrics  : {side}" in text
    metrics = json.loads(side.read_text())
    printed = float(re.search(r"test accuracy : ([0-9.]+)%", text).group(1))
    assert 100 * metrics["test/acc"] == pytest.approx(printed, abs=0.006)
    assert read_accuracy(path) == metrics["test/acc"] and "test/loss" in metrics
    run = read_offline_run(cli_run["dir"])
    cli = run.config["cli"]
    (cb,) = cli["trainer"]["callbacks"]
    assert cb["class_path"] == "bb_lightning.BayesianBits" and cb["init_args"]["mu"] == 0.07
    assert cli["model"]["model_name"] == "test_resnet" and cli["trainer"]["max_epochs"] == 2
    assert any(a.type == "mixed-precision-config" for a in run.artifacts)
    assert len(run.rows_with("bb/layers")) == 2  # the callback's per-epoch table, through the CLI too


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _png_ok(path: Path) -> None:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) > 100 and np.asarray(img.convert("L")).std() > 0


def test_report_on_a_real_exported_config(cli_run, tmp_path, capsys):
    path = cli_run["config"]
    cfg = MixedPrecisionConfig.load(path)
    main(["report", str(path), "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert cfg.table() in out  # the per-layer table
    assert f"accuracy {100 * read_accuracy(path):.2f}%" in out  # read from the sidecar
    _png_ok(tmp_path / "rep" / "mixed_precision_config.png")
    assert not (tmp_path / "rep" / "pareto.png").exists()  # one config: no front

    parser = _Tables()
    parser.feed((tmp_path / "rep" / "report.html").read_text())
    summary, _, layers = parser.tables  # overall summary, this config's totals, its per-layer table
    assert summary[1][3] == f"{100 * cfg.totals['relative_bops']:.3f}%"
    header, *rows = layers
    assert header == ["#", "layer", "type", "w bits", "a bits", "kept/channels", "MACs", "BOPs %"]
    total = sum(v["bops"] for v in cfg.layers.values())
    for row, (name, layer) in zip(rows, cfg.layers.items(), strict=True):
        c = layer["weight_shape"][0]
        kept = c if layer["kept_channels"] is None else len(layer["kept_channels"])
        assert row[1] == name and row[5] == f"{kept}/{c}"
        assert row[3] == str(min(layer["weight"]["bits"], 32))
        assert row[4] == str(min(layer["input"]["bits"], 32) if layer["input"] else cfg.input_bits)
        assert row[7] == f"{100 * layer['bops'] / total:.2f}"
    assert sum(r["bops_share"] for r in layer_rows(cfg)) == pytest.approx(1.0)


def test_report_pareto_front_over_several_fits(cli_run, tmp_path, capsys):
    # a second real fit on the digits with a scrambled (different) allocation
    model = tiny_module()
    cb = BayesianBits(strength=0.1, export_path=str(tmp_path / "b" / "mixed_precision_config.json"))
    t = trainer(tmp_path, [cb])
    t.fit(model, datamodule=digits())
    g = torch.Generator().manual_seed(3)
    state = get_state(model)
    with torch.no_grad():
        for q in state.quantizers():
            q.log_alpha.copy_(torch.rand(q.log_alpha.shape, generator=g) * 8 - 4)
    state.export().save(tmp_path / "c" / "mixed_precision_config.json")
    shutil.copy(cli_run["config"], tmp_path / "a.json")
    configs = [tmp_path / "a.json", tmp_path / "b", tmp_path / "c" / "mixed_precision_config.json"]
    bops = [MixedPrecisionConfig.load(p).totals["relative_bops"] for p in
            [tmp_path / "a.json", cb.config_path, tmp_path / "c" / "mixed_precision_config.json"]]
    acc = [0.9, 0.95, 0.5]
    main(["report", *map(str, configs), "--out", str(tmp_path / "rep"), "--accuracy", *map(str, acc)])
    out = capsys.readouterr().out
    expected = [i for i in range(3) if not any(
        bops[j] <= bops[i] and acc[j] >= acc[i] and (bops[j], acc[j]) != (bops[i], acc[i]) for j in range(3))]
    front = out.split("Pareto front (accuracy vs relative BOPs):")[1].split("\nreport:")[0]
    labels = ["a", "b-mixed_precision_config", "c-mixed_precision_config"]
    listed = [line.split(":")[0].strip() for line in front.strip().splitlines()]
    assert sorted(listed) == sorted(labels[i] for i in expected)
    for i in expected:
        assert f"{labels[i]}: {100 * acc[i]:.2f}% at {100 * bops[i]:.3f}% BOPs" in front
    for name in ["pareto.png", *(f"{label}.png" for label in labels)]:
        _png_ok(tmp_path / "rep" / name)


@pytest.mark.parametrize(
    "args, match",
    [
        (["missing.json"], "missing.json does not exist"),
        (["{cfg}", "--accuracy", "0.9", "0.8"], "2 --accuracy values for 1 configs"),
        (["{cfg}", "--accuracy", "97"], "fraction in \\[0, 1\\]"),
        (["{empty}"], "holds no mixed_precision_config"),
        (["{bad}"], "bad.json.*missing keys|bad.json"),
    ],
)
def test_report_bad_input_names_the_problem(args, match, tmp_path, capsys, cli_run):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text(json.dumps({"format": "bb_lightning.mixed_precision_config", "version": 1,
                                                    "method": "x", "layers": {"a": {}}, "totals": {}}))
    subs = {"{cfg}": str(cli_run["config"]), "{empty}": str(tmp_path / "empty"), "{bad}": str(tmp_path / "bad.json")}
    with pytest.raises(SystemExit) as info:
        main(["report", *(subs.get(a, a) for a in args), "--out", str(tmp_path / "rep")])
    assert info.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_sweep_recipe_keys_are_cli_arguments(capsys):
    sweep = yaml.safe_load(SWEEP.read_text())
    assert sweep["method"] in ("grid", "random", "bayes") and sweep["metric"]["name"] == "test/acc"
    command = sweep["command"]
    assert command[:4] == ["${env}", "python", "-m", "bb_lightning.app.cli"] and command[-1] == "${args}"
    fixed = command[4:-1]
    assert (ROOT / fixed[fixed.index("--config") + 1]).exists()
    for key, spec in sweep["parameters"].items():
        values = spec["values"]
        assert len(values) >= 3 and all(v > 0 for v in values)
        for value in (values[0], values[-1]):
            argv = [a.replace("recipes/", f"{ROOT}/recipes/") for a in fixed] + [f"--{key}={value}", "--print_config"]
            with pytest.raises(SystemExit) as info:
                main(argv)
            assert info.value.code == 0
            printed = yaml.safe_load(capsys.readouterr().out)
            node = printed
            for part in key.split("."):
                node = node[0] if isinstance(node, list) else node
                node = node[part]
            assert node == value
            assert printed["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.WandbLogger"
