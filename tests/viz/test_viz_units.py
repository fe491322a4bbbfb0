"""Snapshot, history, figures, Pareto front, W&B objects and the optional-dependency hint (no Trainer)."""

from __future__ import annotations

import json
import math
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bb_lightning.config import WrapConfig
from bb_lightning.cost.penalty import CostConfig
from bb_lightning.methods.bayesian_bits import BayesianBitsRegularizer as CostRegularizer
from bb_lightning.cost.facts import cost_totals, layer_costs
from bb_lightning.methods.bayesian_bits import BayesianBitsConfig, BayesianBitsQuantizer
from bb_lightning.methods.fixed import FixedQuantizer
from bb_lightning.viz import plots
from bb_lightning.app.report import pareto_front
from bb_lightning.viz.snapshot import BitHistory, take_snapshot
from bb_lightning.wrap.swap import apply_plan, plan_layers


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _p_on(log_alpha: float) -> float:
    """P(z > 0) of a hard-concrete gate (beta = 2/3, gamma = -0.1, zeta = 1.1), in float64."""
    return _sigmoid(log_alpha - (2.0 / 3.0) * math.log(0.1 / 1.1))


def _wrapped(seed: int = 0, strength: float = 0.3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    wrap = WrapConfig()
    records = plan_layers(model, wrap, torch.randn(1, 1, 8, 8))
    modules = apply_plan(model, records, "bayesian_bits", BayesianBitsConfig())
    model.train()
    model(torch.rand(2, 1, 8, 8))  # calibrate the input ranges
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules.values():
            for q in (m.weight_quantizer, m.input_quantizer):
                if q is None:
                    continue
                q.log_alpha.copy_(torch.rand(q.log_alpha.shape, generator=g) * 8 - 3)
                if q.prune_log_alpha is not None:
                    q.prune_log_alpha.copy_(torch.rand(q.prune_log_alpha.shape, generator=g) * 6 - 1.5)
    model.eval()
    reg = CostRegularizer(records, modules, CostConfig(kind="bops", strength=strength))
    return model, records, modules, wrap, reg


def test_bayesian_bits_log_details_are_gate_on_probabilities():
    q = BayesianBitsQuantizer(BayesianBitsConfig(), "weight", num_channels=3)
    with torch.no_grad():
        q.log_alpha.copy_(torch.tensor([2.0, 0.5, -1.0, -4.0]))
        q.prune_log_alpha.copy_(torch.tensor([3.0, -2.0, 0.0]))
    d = q.log_details()
    assert list(d) == ["gate_4", "gate_8", "gate_16", "gate_32", "keep_prob"]
    for key, la in zip(["gate_4", "gate_8", "gate_16", "gate_32"], [2.0, 0.5, -1.0, -4.0]):
        assert d[key].dim() == 0 and not d[key].requires_grad
        assert float(d[key]) == pytest.approx(_p_on(la), rel=1e-5)
    assert float(d["keep_prob"]) == pytest.approx(np.mean([_p_on(v) for v in (3.0, -2.0, 0.0)]), rel=1e-5)
    inp = BayesianBitsQuantizer(BayesianBitsConfig(bits=(2, 4, 8)), "input")
    assert list(inp.log_details()) == ["gate_4", "gate_8"]
    assert FixedQuantizer("weight", 4, True, 1.0).log_details() == {}


def test_regularizer_strength_is_read_only_and_in_effect():
    _, records, modules, _, reg = _wrapped(strength=0.25)
    assert reg.strength == 0.25
    with pytest.raises(AttributeError):
        reg.strength = 1.0  # type: ignore[misc]
    with torch.no_grad():
        assert float(reg()) == pytest.approx(0.25 * float(reg.raw()))


def test_snapshot_matches_layer_costs_and_quantizers():
    _, records, modules, wrap, reg = _wrapped()
    snap = take_snapshot(records, modules, wrap.input_bits, reg)
    costs = layer_costs(records, modules, wrap.input_bits)
    assert snap.names == [r.name for r in records] == ["0", "2", "4"]
    assert snap.totals == cost_totals(costs)
    scalars = snap.scalars()
    assert scalars["bb/relative_bops"] == pytest.approx(
        sum(min(c.w_bits, 32) * min(c.a_bits, 32) * c.macs * c.kept_macs_fraction for c in costs)
        / sum(1024 * c.macs for c in costs)
    )
    assert scalars["bb/mean_weight_bits"] == pytest.approx(np.mean([min(c.w_bits, 32) for c in costs]))
    assert scalars["bb/strength"] == 0.3
    with torch.no_grad():
        assert scalars["bb/regularizer"] == pytest.approx(float(reg.raw()))
    rows = snap.rows()
    cols = snap.columns()
    assert len(rows) == 3 and all(len(r) == len(cols) for r in rows)
    assert sum(r[cols.index("bops_share")] for r in rows) == pytest.approx(1.0)
    for row, rec in zip(rows, records):
        m = modules[rec.name]
        assert row[cols.index("weight_bits")] == min(m.weight_quantizer.hard_bits(), 32)
        mask = m.weight_quantizer.keep_mask()  # None for the classifier (last layer is never pruned)
        assert row[cols.index("kept_channels")] == (rec.weight_shape[0] if mask is None else int(mask.sum()))
        probs = m.weight_quantizer.log_alpha.detach().tolist()
        assert row[cols.index("w_gate_8")] == pytest.approx(_p_on(probs[1]), rel=1e-5)
    # the first layer's input is not quantized (weights_only): no a_* details for it
    assert rows[0][cols.index("a_gate_4")] is None and rows[1][cols.index("a_gate_4")] is not None
    assert len(snap.detail_values()["a_gate_4"]) == 2


def test_history_append_replace_reset_and_roundtrip():
    _, records, modules, wrap, _ = _wrapped()
    snap = take_snapshot(records, modules, wrap.input_bits)
    h = BitHistory()
    h.append(0, snap)
    h.append(1, snap)
    h.append(1, snap)  # a second validation in the same epoch replaces the row
    assert h.epochs == [0, 1] and len(h.w_bits) == 2 and h.w_bits[0] == [layer.weight_bits for layer in snap.layers]
    again = BitHistory.from_dict(json.loads(json.dumps(h.to_dict())))
    assert again == h
    snap.layers = snap.layers[:2]
    h.append(2, snap)  # other layers: a new history
    assert h.epochs == [2] and len(h.layers) == 2
    assert BitHistory.from_dict(None) == BitHistory()


def _check_png(path):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        arr = np.asarray(img.convert("L"))
    assert arr.std() > 0  # not a blank canvas


def test_figures_are_valid_pngs(tmp_path):
    _, records, modules, wrap, _ = _wrapped()
    snap = take_snapshot(records, modules, wrap.input_bits)
    h = BitHistory()
    for e in range(3):
        h.append(e, snap)
    figs = plots.snapshot_figures(snap, h)
    assert set(figs) == {"bits_per_layer", "gate_histograms", "bit_heatmap"}
    for name, fig in figs.items():
        _check_png(plots.save_png(fig, tmp_path / f"{name}.png"))
    _check_png(plots.save_png(plots.bit_heatmap_figure(BitHistory()), tmp_path / "empty.png"))
    _check_png(plots.save_png(plots.detail_histogram_figure({}), tmp_path / "nodetails.png"))
    fig = plots.allocation_figure(["a", "b"], [4, 0], [8, 8], [3, 0], [4, 2], [1.0, 0.0])
    _check_png(plots.save_png(fig, tmp_path / "alloc.png"))
    fig = plots.pareto_figure(["x", "y", "z"], [0.1, 0.2, 0.05], [0.9, 0.95, 0.8], [0, 1, 2])
    _check_png(plots.save_png(fig, tmp_path / "pareto.png"))
    assert not list(tmp_path.glob(".*.tmp"))


def test_pareto_front_matches_brute_force():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 8)
        b = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(n)]
        a = [rng.choice([0.8, 0.85, 0.9]) for _ in range(n)]
        expected = [
            i for i in range(n)
            if not any(b[j] <= b[i] and a[j] >= a[i] and (b[j], a[j]) != (b[i], a[i]) for j in range(n))
        ]
        assert pareto_front(b, a) == expected


def test_wandb_objects_from_snapshot():
    pytest.importorskip("wandb")  # a dev dependency; the extra [wandb] for users
    from bb_lightning.viz.wandb_objects import epoch_objects, layer_table

    _, records, modules, wrap, _ = _wrapped()
    snap = take_snapshot(records, modules, wrap.input_bits)
    table = layer_table(snap)
    assert table.columns == snap.columns() and [list(r) for r in table.data] == snap.rows()
    h = BitHistory()
    h.append(0, snap)
    objs = epoch_objects(snap, h)
    assert {"bb/layers", "bb/bit_heatmap", "bb/weight_bits_per_layer", "bb/details/w_gate_4"} <= set(objs)
    counts = objs["bb/details/w_gate_4"].histogram
    assert sum(counts) == 3


def test_missing_wandb_gives_install_hint(monkeypatch):
    from types import SimpleNamespace

    from lightning.pytorch.loggers import WandbLogger

    from bb_lightning.plugin.monitor import BitMonitor
    from bb_lightning.viz.wandb_objects import require_wandb

    logger = WandbLogger(offline=True)  # needs wandb to construct; then wandb "disappears"
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ModuleNotFoundError, match=r'pip install "bb_lightning\[wandb\]"'):
        require_wandb()
    with pytest.raises(ModuleNotFoundError, match=r"WandbLogger.*pip install \"bb_lightning\[wandb\]\""):
        BitMonitor().on_fit_start(SimpleNamespace(loggers=[logger]), None)
    BitMonitor().on_fit_start(SimpleNamespace(loggers=[]), None)  # no W&B asked for: nothing needed


def test_rich_objects_only_on_rank_zero_and_never_with_step(monkeypatch):
    pytest.importorskip("wandb")
    from types import SimpleNamespace
    from unittest import mock

    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    from bb_lightning.plugin.monitor import BitMonitor

    _, records, modules, wrap, _ = _wrapped()
    snap = take_snapshot(records, modules, wrap.input_bits)
    logger = WandbLogger(offline=True)
    logger._experiment = mock.MagicMock()  # records the calls instead of starting a run
    fake_trainer = SimpleNamespace(loggers=[logger], global_step=7)
    monitor = BitMonitor()
    monitor.history.append(0, snap)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    monitor._log_rich(fake_trainer, snap)
    assert logger._experiment.log.call_count == 0
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    monitor._log_rich(fake_trainer, snap)
    (call,) = logger._experiment.log.call_args_list
    assert call.kwargs == {"commit": False} and "step" not in call.kwargs
    assert "bb/layers" in call.args[0] and "bb/bit_heatmap" in call.args[0]
