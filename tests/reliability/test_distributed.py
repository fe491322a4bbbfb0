"""DDP on 2 CPU processes (gloo) for every method, and the strategies that are rejected up front."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from lightning.pytorch.strategies import FSDPStrategy

from bb_lightning import BBConfigError, MixedPrecisionConfig
from bb_lightning.plugin.state import get_state
from reliability.common import tiny_module
from reliability.methods import METHODS

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def _run(out: Path, method: str, strategy: str, finetune_epochs: int) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "reliability.ddp_worker", str(out), method, strategy, str(finetune_epochs)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


@pytest.mark.lightning_fit
@pytest.mark.timeout(400)
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_ddp_two_processes_agree(tmp_path, method, strategy):
    # find_unused_parameters=False, some gates cut off from the start, gates fixed for the last of 2 epochs
    log = _run(tmp_path, method, strategy, finetune_epochs=1)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # identical final state and export on every rank
    assert ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["config"] is not None and ranks[0]["config"] == ranks[1]["config"]
    assert all(r["frozen"] for r in ranks)
    # ranges from the reduction of both ranks' first batches, not each rank's own
    first0, first1 = ranks[0]["first_inputs"], ranks[1]["first_inputs"]
    assert first0 and first0.keys() == first1.keys()
    differ = 0
    for name in first0:
        a, b = first0[name], first1[name]
        lo, hi = min(a["lo"], b["lo"]), max(a["hi"], b["hi"])
        assert a["range"] == b["range"], name
        if method == "bit_pruning":  # min-max range of both ranks' first batches
            assert a["range"] == pytest.approx([lo, hi], rel=1e-6), name
        else:  # symmetric / unsigned range u = max|x| over both ranks
            assert a["range"][1] == pytest.approx(max(hi, -lo), rel=1e-6), name
        differ += a["hi"] != b["hi"]
    assert differ, "both ranks saw the same first batch: the test would not catch per-rank ranges"
    # gates fixed mid-fit did not move in the fine-tuning epoch (their zero DDP gradients are dropped)
    gates = ranks[0]["gates_at_freeze"]
    assert gates and all(ranks[0]["params"][n] == v for n, v in gates.items())
    # one export, by rank zero only, equal to what every rank holds
    exports = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert exports == ["config.json"]
    assert ranks[0]["config_path"] == str(tmp_path / "export" / "config.json") and ranks[1]["config_path"] is None
    saved = MixedPrecisionConfig.load(tmp_path / "export" / "config.json")
    assert saved.to_dict() == ranks[0]["config"]
    assert log.count("learned mixed-precision configuration") == 1
    assert len(list((tmp_path / "logs").rglob("metrics.csv"))) == 1
    if strategy == "ddp_spawn":  # documented: the launching process is not updated; a warning says so
        assert json.loads((tmp_path / "launcher.json").read_text()) == {"config": False, "wrapped": False}
        assert "ddp_spawn" in log


@pytest.mark.timeout(200)
def test_non_finite_first_batch_on_one_rank_raises_on_every_rank(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "reliability.nan_rank_worker", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name in ranks[0]:
        for rank in ranks:  # both ranks raise the named error; none waits for the other (gloo timeout)
            assert rank[name].startswith("NonFiniteError"), (name, rank[name])
            assert f"`{name}.conv`" in rank[name] and "on at least one rank" in rank[name]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fsdp_is_rejected_up_front(method):
    module = tiny_module()
    trainer = types.SimpleNamespace(strategy=FSDPStrategy())  # a real Trainer refuses FSDP on CPU itself
    with pytest.raises(BBConfigError, match=r"FSDPStrategy.*Supported strategies: a single device, or DDP"):
        METHODS[method]().setup(trainer, module, "fit")
    assert get_state(module) is None
