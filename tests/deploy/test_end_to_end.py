"""End to end on a trained fixture: the default digits recipe (about a minute on 2 cores), `bb-lightning export
<run dir>` with no other argument, and onnxruntime vs the fake-quantized model on the whole digits test set."""

from __future__ import annotations

import copy
import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bb_lightning import MixedPrecisionConfig, apply_config
from bb_lightning.deploy import export_onnx, ort_session
from bb_lightning.deploy.runs import find_run_files, load_run_model
from bb_lightning.app.cli import main
from bb_lightning.app.data import DigitsDataModule

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "digits_bayesian_bits.yaml"
pytestmark = [pytest.mark.lightning_fit, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The default recipe as it is (resnet10t, 30 epochs), with the callback's ``export_onnx`` option on."""
    tmp = tmp_path_factory.mktemp("digits_run")
    with redirect_stdout(io.StringIO()):
        main([
            "fit", "--config", str(RECIPE),
            "--trainer.default_root_dir", str(tmp),
            "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks.init_args.export_onnx", "true",
        ])  # fmt: skip
    return tmp


@pytest.fixture(scope="module")
def digits_test_set():
    dm = DigitsDataModule(batch_size=512, image_size=16, channels=1)
    dm.setup("test")
    xs, ys = zip(*[(x, y) for x, y in dm.test_dataloader()])
    return torch.cat(xs), torch.cat(ys)


def test_callback_wrote_model_onnx_next_to_the_config(run_dir):
    (config,) = run_dir.rglob("mixed_precision_config.json")
    onnx.checker.check_model(str(config.parent / "model.onnx"), full_check=True)


def test_export_subcommand_needs_only_the_run_dir_and_never_overwrites(run_dir, capsys):
    (config,) = run_dir.rglob("mixed_precision_config.json")
    out = config.parent / "model.onnx"
    out.unlink()
    main(["export", str(run_dir)])
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "pruned channels:" in printed
    onnx.checker.check_model(str(out), full_check=True)
    stamp = out.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="overwrite"):
        main(["export", str(config)])
    assert out.stat().st_mtime_ns == stamp
    main(["export", str(config), "--output", str(run_dir / "copy.onnx"), "--keep-pruned"])
    assert (run_dir / "copy.onnx").exists()


def _agreement(model, config, path, x, y):
    with torch.no_grad():
        fixed = apply_config(copy.deepcopy(model), config).eval()
        ref = fixed(x).argmax(1)
    got = torch.from_numpy(ort_session(path, threads=2).run(None, {"input": x.numpy()})[0]).argmax(1)
    agree = float((got == ref).float().mean())
    acc_ref, acc_got = float((ref == y).float().mean()), float((got == y).float().mean())
    return agree, acc_ref, acc_got


def test_onnxruntime_agrees_with_the_fake_quantized_model_on_the_whole_test_set(run_dir, digits_test_set, tmp_path):
    x, y = digits_test_set
    files = find_run_files(run_dir)
    config = MixedPrecisionConfig.load(files.config)
    model, example = load_run_model(files, config)
    path = config_path = files.config.parent / "model.onnx"
    if not path.exists():
        export_onnx(model, config, path, example)
    agree, acc_ref, acc_got = _agreement(model, config, path, x, y)
    assert acc_ref > 0.9, f"the fixture did not train ({acc_ref:.3f})"
    assert config.totals["pruned_channel_fraction"] > 0.3  # the search pruned: removal is exercised
    assert agree >= 0.99 and abs(acc_got - acc_ref) <= 0.005, (agree, acc_ref, acc_got, config_path)
    # the same trained weights at low widths (every layer w4, inputs a8, some w2): still faithful
    low = MixedPrecisionConfig.from_dict(config.to_dict())
    for i, layer in enumerate(low.layers.values()):
        if layer["quantized"]:
            layer["weight"]["bits"] = 2 if i % 4 == 3 else 4
            if layer["input"] is not None:
                layer["input"]["bits"] = 8
    export_onnx(model, low, tmp_path / "low.onnx", example)
    agree, acc_ref, acc_got = _agreement(model, low, tmp_path / "low.onnx", x, y)
    assert agree >= 0.99 and abs(acc_got - acc_ref) <= 0.005, (agree, acc_ref, acc_got)
    assert np.isfinite(acc_ref)


def test_fine_tune_callback_writes_model_onnx_in_its_log_dir(run_dir, tmp_path):
    import lightning.pytorch as pl

    from bb_lightning.plugin.finetune import FixedGateFinetune
    from bb_lightning.app.module import TimmClassifier

    files = find_run_files(run_dir)
    module = TimmClassifier("resnet10t", num_classes=10, in_chans=1, input_size=(1, 16, 16))
    ft = FixedGateFinetune(config=str(files.config), weights=str(files.checkpoint), export_onnx=True)
    trainer = pl.Trainer(default_root_dir=str(tmp_path), max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                         accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[ft])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, image_size=16))
    path = tmp_path / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        ref = module.eval()(x).numpy()
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    assert float(np.abs(got - ref).mean()) <= 0.02 * float(np.abs(ref).mean())
