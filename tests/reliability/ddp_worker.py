"""One DDP run on 2 CPU processes (gloo) for `test_distributed.py`; each rank writes what it ended with.

Run as ``python -m reliability.ddp_worker OUT_DIR METHOD STRATEGY [FINETUNE_EPOCHS]`` with ``tests/`` on
``PYTHONPATH``. ``STRATEGY`` is ``ddp`` (Lightning launches rank 1 by re-running this script) or ``ddp_spawn``.
Writes ``OUT_DIR/rank<r>.json`` with the rank's final MixedPrecisionConfig, every quantizer parameter, the gates when
they were fixed, and the first input each input quantizer saw (local min/max) with the range it initialised to.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from bb_lightning.plugin.search import QuantizationSearch
from bb_lightning.plugin.state import get_state


class Probe(pl.Callback):
    """Record each input quantizer's first local input range and the range it initialised to; dump at fit end."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.first: dict[str, dict] = {}
        self.gates_at_freeze: dict | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, m in get_state(pl_module).modules.items():
            q = m.input_quantizer
            if q is None:
                continue

            def pre(mod, args, name=name):
                if name not in self.first:
                    lo, hi = torch.aminmax(args[0].detach().float())
                    self.first[name] = {"lo": float(lo), "hi": float(hi)}

            def post(mod, args, output, name=name):
                self.first[name].setdefault("range", list(mod.range()))

            q.register_forward_pre_hook(pre)
            q.register_forward_hook(post)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if get_state(pl_module).frozen and self.gates_at_freeze is None:
            self.gates_at_freeze = {
                n: p.detach().tolist()
                for n, p in pl_module.named_parameters()
                if n.endswith(("log_alpha", "bitlength"))
            }

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cb = next(c for c in trainer.callbacks if isinstance(c, QuantizationSearch))
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "config": cb.config.to_dict() if cb.config is not None else None,
            "params": {n: p.detach().tolist() for n, p in pl_module.named_parameters() if "quantizer" in n},
            "first_inputs": self.first,
            "frozen": get_state(pl_module).frozen,
            "gates_at_freeze": self.gates_at_freeze,
            "config_path": None if cb.config_path is None else str(cb.config_path),
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main(out_dir: str, method: str, strategy_name: str, finetune_epochs: str = "0") -> None:
    from lightning.pytorch.strategies import DDPStrategy

    from bb_lightning.app.data import DigitsDataModule
    from bb_lightning.app.module import TimmClassifier
    from reliability.methods import METHODS

    out = Path(out_dir)
    pl.seed_everything(0, workers=True)
    torch.set_num_threads(1)
    model = TimmClassifier(model_name="test_resnet", num_classes=10, in_chans=1, input_size=(1, 16, 16), lr=1e-3)
    cb = METHODS[method](
        low_gates=True, export_path=str(out / "export" / "config.json"), finetune_epochs=int(finetune_epochs)
    )
    strategy = DDPStrategy(
        find_unused_parameters=False,
        process_group_backend="gloo",
        start_method="spawn" if strategy_name == "ddp_spawn" else "popen",
    )
    trainer = pl.Trainer(
        default_root_dir=str(out),
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=pl.loggers.CSVLogger(str(out / "logs")),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb, Probe(str(out))],
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16, image_size=16))
    # in the launching process of ddp_spawn: what the user sees there
    if strategy_name == "ddp_spawn":
        seen = {"config": cb.config is not None, "wrapped": get_state(model) is not None}
        (out / "launcher.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(*sys.argv[1:5])
