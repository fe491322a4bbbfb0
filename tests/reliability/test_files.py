"""Exports are atomic (crash, full disk, concurrent writer), never overwrite unless asked, and loading checks the
schema version and the model's layer names and shapes, naming every mismatch."""

from __future__ import annotations

import errno
import json
import os

import pytest
import timm
import torch
from torch import nn

from bb_lightning import BBConfigError, MixedPrecisionConfig, apply_config
from bb_lightning.config import WrapConfig
from bb_lightning.export import build_config
from bb_lightning.export import config as config_module
from bb_lightning.methods.bayesian_bits import BayesianBitsConfig
from bb_lightning.wrap.swap import apply_plan, plan_layers


def _config(num_classes: int = 10) -> MixedPrecisionConfig:
    model = timm.create_model("test_resnet", num_classes=num_classes, in_chans=1)
    records = plan_layers(model, WrapConfig(), torch.zeros(1, 1, 16, 16))
    modules = apply_plan(model, records, "bayesian_bits", BayesianBitsConfig())
    model.train()
    model(torch.randn(2, 1, 16, 16))
    return build_config(records, modules, "bayesian_bits", 8, type(model).__name__)


def _only(path):
    return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("failure", ["disk_full", "crash_in_dump"])
def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch, failure, overwrite):
    cfg = _config()
    path = tmp_path / "cfg.json"
    if overwrite:
        path.write_text("old")
    if failure == "disk_full":
        def fsync(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(config_module.os, "fsync", fsync)
    else:
        def dump(obj, f, **kw):
            f.write('{"format": "bb_lightning.mixed')  # half a file, then the process "dies"
            raise KeyboardInterrupt
        monkeypatch.setattr(config_module.json, "dump", dump)
    with pytest.raises((OSError, KeyboardInterrupt)):
        cfg.save(path, overwrite=overwrite)
    if overwrite:
        assert path.read_text() == "old" and _only(path) == ["cfg.json"]
    else:
        assert not path.exists() and _only(path) == []


def test_save_never_overwrites_unless_asked(tmp_path):
    cfg = _config()
    path = tmp_path / "cfg.json"
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        cfg.save(path)
    assert path.read_text() == "keep me" and _only(path) == ["cfg.json"]
    cfg.save(path, overwrite=True)
    assert MixedPrecisionConfig.load(path).to_dict() == json.loads(json.dumps(cfg.to_dict()))


def test_a_file_created_during_the_write_is_not_replaced(tmp_path, monkeypatch):
    cfg = _config()
    path = tmp_path / "cfg.json"
    real_fsync = os.fsync

    def fsync(fd):  # another process creates the file between the existence check and publishing
        real_fsync(fd)
        path.write_text("the other run's export")

    monkeypatch.setattr(config_module.os, "fsync", fsync)
    with pytest.raises(FileExistsError):
        cfg.save(path)
    assert path.read_text() == "the other run's export" and _only(path) == ["cfg.json"]


def test_load_checks_schema_version(tmp_path):
    d = _config().to_dict()
    d["version"] = 2
    path = tmp_path / "future.json"
    path.write_text(json.dumps(d))
    with pytest.raises(BBConfigError, match=r"future.json.*version.*2.*reads 1"):
        MixedPrecisionConfig.load(path)


def test_load_and_apply_name_every_mismatching_layer(tmp_path):
    path = _config().save(tmp_path / "cfg.json")
    other = timm.create_model("test_resnet", num_classes=7, in_chans=1)  # classifier shape differs
    other.layer1[0].conv1 = nn.Conv2d(32, 32, 5, padding=2, bias=False)  # and a kernel size
    other.extra = nn.Linear(3, 3)  # and a layer the config does not know
    del other.layer4[0].downsample  # and a missing one
    with pytest.raises(BBConfigError) as err:
        MixedPrecisionConfig.load(path, model=other)
    msg = str(err.value)
    assert "cfg.json" in msg and "4 problem(s)" in msg
    for part in ("`fc`: weight shape [7, ", "`layer1.0.conv1`: weight shape [32, 32, 5, 5]",
                 "`layer4.0.downsample.1`: no such module", "not in the config: ['extra']"):
        assert part in msg, part
    with pytest.raises(BBConfigError, match="4 problem"):
        apply_config(other, MixedPrecisionConfig.load(path))
