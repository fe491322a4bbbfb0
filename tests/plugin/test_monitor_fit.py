"""The bit allocation in a real fit: bb/* scalars in any logger, PNGs, history across resume, W&B read back."""

from __future__ import annotations

import base64
import csv
import hashlib
import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import digits, tiny_module, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from wandb_records import read_offline_run

from bb_lightning import BayesianBits, MixedPrecisionConfig
from bb_lightning.plugin.state import get_state

pytestmark = [pytest.mark.lightning_fit, pytest.mark.timeout(300)]

SCALARS = [
    "bb/relative_bops", "bb/weight_memory_bytes", "bb/average_weight_bits", "bb/mean_weight_bits",
    "bb/mean_activation_bits", "bb/pruned_fraction", "bb/regularizer", "bb/strength",
]

MOVING = dict(strength=0.2)


class ScrambleGates(pl.Callback):
    """Before each validation, set every gate to a seeded random value (seed = epoch), so the logged allocation is
    mixed (several bit widths, pruned channels) and differs between epochs; a few training steps would not do it."""

    def on_validation_epoch_start(self, trainer, pl_module):
        g = torch.Generator().manual_seed(trainer.current_epoch)
        with torch.no_grad():
            for q in get_state(pl_module).quantizers():
                q.log_alpha.copy_(torch.rand(q.log_alpha.shape, generator=g) * 8 - 3)
                if q.prune_log_alpha is not None:
                    q.prune_log_alpha.copy_(torch.rand(q.prune_log_alpha.shape, generator=g) * 7 - 1)


def _by_hand(cfg: MixedPrecisionConfig) -> dict[str, float]:
    """Relative BOPs and mean bits recomputed from the exported per-layer widths, MACs and kept channels."""
    bops = fp32 = 0.0
    w_bits, a_bits = [], []
    for i, layer in enumerate(cfg.layers.values()):
        c = layer["weight_shape"][0]
        kept = c if layer["kept_channels"] is None else len(layer["kept_channels"])
        w = min(layer["weight"]["bits"], 32) if layer["quantized"] else 32
        a = min(layer["input"]["bits"], 32) if layer["input"] else (cfg.input_bits if i == 0 else 32)
        bops += w * a * layer["macs"] * kept / c
        fp32 += 1024 * layer["macs"]
        w_bits.append(w)
        a_bits.append(a)
    return {"relative_bops": bops / fp32, "mean_w": float(np.mean(w_bits)), "mean_a": float(np.mean(a_bits))}


def _unfrozen_regularizer(model) -> float:
    """sum_k R_k of the final gates, as it was at the last validation (before fit's end fixed the gates)."""
    state = get_state(model)
    qs = state.quantizers()
    for q in qs:
        q.frozen = False
    try:
        with torch.no_grad():
            return float(state.regularizer.raw())
    finally:
        for q in qs:
            q.frozen = True


def _png_ok(path) -> None:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) > 100
        assert np.asarray(img.convert("L")).std() > 0


def test_scalars_any_logger_pngs_and_history_survive_resume(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = BayesianBits(**MOVING)
    model = tiny_module()
    csv_logger = pl.loggers.CSVLogger(tmp_path, name="logs")
    t = trainer(tmp_path, [ScrambleGates(), cb, ckpt], logger=csv_logger, max_epochs=2, enable_checkpointing=True)
    t.fit(model, datamodule=digits())

    # every validation epoch: every scalar, through self.log (CSV logger), main ones on the progress bar
    rows = list(csv.DictReader(open(tmp_path / "logs" / "version_0" / "metrics.csv")))
    val_rows = [r for r in rows if r.get("bb/relative_bops")]
    assert [int(r["epoch"]) for r in val_rows] == [0, 1]
    assert all(r[k] != "" for r in val_rows for k in SCALARS)
    assert {"bb/relative_bops", "bb/mean_weight_bits", "bb/pruned_fraction"} <= set(t.progress_bar_metrics)
    last = {k: float(v) for k, v in val_rows[-1].items() if k in SCALARS}
    cfg = MixedPrecisionConfig.load(cb.config_path)
    assert len({v["weight"]["bits"] for v in cfg.layers.values()}) > 1  # a non-trivial allocation to check
    assert any(v["kept_channels"] is not None for v in cfg.layers.values())
    hand = _by_hand(cfg)
    assert last["bb/relative_bops"] == pytest.approx(hand["relative_bops"], rel=1e-6)
    assert last["bb/relative_bops"] == pytest.approx(cfg.totals["relative_bops"], rel=1e-6)
    assert last["bb/mean_weight_bits"] == pytest.approx(hand["mean_w"])
    assert last["bb/mean_activation_bits"] == pytest.approx(hand["mean_a"])
    assert last["bb/strength"] == pytest.approx(0.2)
    assert last["bb/regularizer"] == pytest.approx(_unfrozen_regularizer(model), rel=1e-5)

    # PNGs and the CSV table in the run's log directory
    plot_dir = tmp_path / "logs" / "version_0" / "bb_plots"
    for stem in ("bits_per_layer", "gate_histograms", "bit_heatmap"):
        _png_ok(plot_dir / f"{stem}.png")
    table = list(csv.DictReader(open(plot_dir / "layers.csv")))
    assert [r["layer"] for r in table] == list(cfg.layers)
    assert [int(r["weight_bits"]) for r in table] == [min(v["weight"]["bits"], 32) for v in cfg.layers.values()]

    # the layer x epoch history is in the callback state, in the checkpoint, and continues after a resume
    hist = cb.state_dict()["bit_history"]
    assert hist["epochs"] == [0, 1] and hist["layers"] == list(cfg.layers)
    assert hist["w_bits"][-1] == [int(r["weight_bits"]) for r in table]
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["callbacks"][cb.state_key]["bit_history"] == hist
    cb2 = BayesianBits(**MOVING)
    t2 = trainer(tmp_path / "resume", [ScrambleGates(), cb2], max_epochs=3)
    t2.fit(tiny_module(), datamodule=digits(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert cb2.monitor.history.epochs == [0, 1, 2]
    assert cb2.monitor.history.w_bits[:2] == hist["w_bits"] != [hist["w_bits"][0]] * 2  # epochs differ
    # no logger: the plots go to a per-run folder under default_root_dir, with the export
    assert cb2.config_path == tmp_path / "resume" / "bb_lightning" / "version_0" / "mixed_precision_config.json"
    _png_ok(tmp_path / "resume" / "bb_lightning" / "version_0" / "bb_plots" / "bit_heatmap.png")


def test_wandb_offline_run_reads_back(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))  # artifact staging stays in tmp_path
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    cb = BayesianBits(**{**MOVING, "strength": 0.1}, export_path=str(tmp_path / "bits.json"))
    model = tiny_module()
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="bb-test")
    try:
        t = trainer(tmp_path, [ScrambleGates(), cb], logger=logger, max_epochs=2)
        t.fit(model, datamodule=digits())
    finally:
        wandb.finish()
    run = read_offline_run(tmp_path)
    cfg = MixedPrecisionConfig.load(cb.config_path)
    names = list(cfg.layers)
    state = get_state(model)

    # scalars: once per validation epoch, with the values the model has
    rows = run.rows_with("bb/relative_bops")
    assert len(rows) == 2 and all("trainer/global_step" in r for r in rows)
    assert rows[-1]["bb/relative_bops"] == pytest.approx(cfg.totals["relative_bops"], rel=1e-6)
    assert rows[-1]["bb/relative_bops"] == pytest.approx(_by_hand(cfg)["relative_bops"], rel=1e-6)
    assert rows[-1]["bb/strength"] == pytest.approx(0.1)
    assert rows[-1]["bb/regularizer"] == pytest.approx(_unfrozen_regularizer(model), rel=1e-5)

    # per-layer table every validation epoch, in the row of that epoch's scalars (no step= to wandb.log)
    tables = run.rows_with("bb/layers")
    assert tables == rows  # the same rows as the epoch's scalars, hence the same trainer/global_step
    data = json.loads(run.media(tables[-1]["bb/layers"]).read_text())
    cols = data["columns"]
    assert cols[:8] == ["index", "layer", "macs", "weight_bits", "activation_bits", "kept_channels", "channels",
                        "bops_share"]
    assert {"w_gate_4", "w_gate_8", "w_gate_16", "w_gate_32", "w_keep_prob", "a_gate_4"} <= set(cols)
    assert [r[cols.index("layer")] for r in data["data"]] == names  # network order
    for r, (name, layer) in zip(data["data"], cfg.layers.items()):
        q = state.modules[name].weight_quantizer
        assert r[cols.index("weight_bits")] == min(layer["weight"]["bits"], 32)
        assert r[cols.index("macs")] == layer["macs"]
        kept = layer["weight_shape"][0] if layer["kept_channels"] is None else len(layer["kept_channels"])
        assert r[cols.index("kept_channels")] == kept
        probs = q.gate_probabilities().tolist()
        assert [r[cols.index(f"w_gate_{b}")] for b in (4, 8, 16, 32)] == pytest.approx(probs, rel=1e-5)

    # histograms of gate probabilities, over every layer
    hist = tables[-1]["bb/details/w_gate_4"]
    assert hist["_type"] == "histogram" and sum(hist["values"]) == len(names)
    assert sum(tables[-1]["bb/details/a_gate_4"]["values"]) == len(names) - 1  # first input is not quantized

    # bar chart of bits per layer in network order (wandb.plot.bar -> a table plus a Vega panel)
    bar = json.loads(run.media(tables[-1]["bb/weight_bits_per_layer_table"]).read_text())
    assert [label.split(" ", 1)[1] for label, _ in bar["data"]] == names
    assert [bits for _, bits in bar["data"]] == [min(v["weight"]["bits"], 32) for v in cfg.layers.values()]
    panel = run.panels["bb/weight_bits_per_layer"]["panel_config"]
    assert panel["panelDefId"] == "wandb/bar/v0" and panel["fieldSettings"] == {"label": "layer", "value": "bits"}

    # heat map image per epoch, and the final pictures
    for r in tables:
        _png_ok(run.media(r["bb/bit_heatmap"]))
    (final,) = run.rows_with("bb_final/bit_heatmap")
    for stem in ("bit_heatmap", "bits_per_layer", "gate_histograms"):
        _png_ok(run.media(final[f"bb_final/{stem}"]))

    # the exported config as an artifact: right type, and exactly the file on disk
    (art,) = [a for a in run.artifacts if a.type == "mixed-precision-config"]
    (entry,) = art.manifest.contents
    raw = cb.config_path.read_bytes()
    assert entry.path == "bits.json" and entry.size == len(raw)
    assert entry.digest == base64.b64encode(hashlib.md5(raw).digest()).decode()
    assert json.loads(art.metadata)["relative_bops"] == pytest.approx(cfg.totals["relative_bops"])

    # the callback's settings in the run config
    assert run.config["bb_lightning"]["cost"] == {"kind": "bops", "strength": 0.1}
    assert run.config["bb_lightning"]["method"] == "bayesian_bits"
