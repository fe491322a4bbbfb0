"""``BitMonitor``: makes a quantization callback's bit allocation visible in any logger, W&B and PNG files.

* every validation epoch, on every rank: ``bb/*`` scalars through ``LightningModule.log`` (any logger; the main ones
  on the progress bar), and one row of the layer x epoch bit history;
* every validation epoch, rank zero, for each ``WandbLogger``: the per-layer table, histograms of the method's
  details (gate probabilities), bar charts of bits per layer and the heat map image (`bb_lightning.viz.wandb_objects`);
* at the end of ``fit``, rank zero: PNG files and a CSV of the final allocation in ``<run folder>/bb_plots/`` (the
  folder of the export, `bb_lightning.plugin.export_hook`), and for
  each ``WandbLogger`` the same images plus the exported config as an artifact of type ``mixed-precision-config``.

Per-epoch rich objects go through ``wandb.log(..., commit=False)`` (joining the row of the epoch's ``bb/*`` scalars,
which Lightning logs right after the hook), the final ones through ``WandbLogger.log_metrics`` (which adds
``trainer/global_step``); nothing passes ``step=`` to ``wandb.log``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from .._io import atomic_write
from ..viz.snapshot import BitHistory, BitSnapshot, take_snapshot
from .state import QuantizationState, _init_fields

PLOT_DIR = "bb_plots"
#: Scalars also shown on the progress bar.
PROG_BAR = ("bb/relative_bops", "bb/mean_weight_bits", "bb/pruned_fraction")


def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def snapshot(state: QuantizationState) -> BitSnapshot:
    return take_snapshot(state.records, state.modules, state.wrap.input_bits, state.regularizer)


def _write_csv(path: Path, snap: BitSnapshot) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(snap.columns())
    writer.writerows(snap.rows())
    atomic_write(path, buf.getvalue())


class BitMonitor:
    """Owned by `bb_lightning.plugin.search.QuantizationSearch`; keeps the bit history
    (persisted in the callback's state)."""

    def __init__(self) -> None:
        self.history = BitHistory()
        #: PNG/CSV files written at the end of the last ``fit`` (rank zero), by stem.
        self.files: dict[str, Path] = {}

    # ----- fit start ---------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, callback: Any) -> None:
        if wandb_loggers(trainer):
            from ..viz.wandb_objects import require_wandb

            require_wandb("A `WandbLogger` on the Trainer")
            self._log_settings(trainer, callback)

    @rank_zero_only
    def _log_settings(self, trainer: pl.Trainer, callback: Any) -> None:
        """The callback's settings go into the W&B run config under ``bb_lightning``."""
        settings = {
            "method": callback.method,
            "method_config": _init_fields(callback.method_config),
            "wrap": _init_fields(callback.wrap),
            "cost": _init_fields(callback.cost),
            "schedule": _init_fields(callback.schedule),
        }
        for logger in wandb_loggers(trainer):
            logger.log_hyperparams({"bb_lightning": settings})

    # ----- every validation epoch --------------------------------------------------------------------------
    def on_validation_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: QuantizationState
    ) -> None:
        snap = snapshot(state)
        for name, value in snap.scalars().items():
            pl_module.log(name, value, prog_bar=name in PROG_BAR, sync_dist=False)
        self.history.append(trainer.current_epoch, snap)
        self._log_rich(trainer, snap)

    @rank_zero_only
    def _log_rich(self, trainer: pl.Trainer, snap: BitSnapshot) -> None:
        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        from ..viz.wandb_objects import epoch_objects

        objects = epoch_objects(snap, self.history)
        for logger in loggers:
            # uncommitted: W&B merges them into the row of this epoch's scalars, which Lightning logs right after
            # this hook (with its own trainer/global_step); so tables and scalars share one step
            logger.experiment.log(objects, commit=False)

    # ----- end of fit (rank zero) --------------------------------------------------------------------------
    def on_fit_end(
        self, trainer: pl.Trainer, state: QuantizationState, config_path: Path | None, log_dir: Path
    ) -> dict[str, Path]:
        """Write ``<log_dir>/bb_plots/{bits_per_layer,gate_histograms,bit_heatmap}.png`` and ``layers.csv``; log them
        and the config artifact to every ``WandbLogger``. Call on rank zero only."""
        from ..viz.plots import png_bytes, save_png, snapshot_figures

        snap = snapshot(state)
        if not len(self.history):  # no validation ran: the heat map shows the final allocation
            self.history.append(trainer.current_epoch, snap)
        out_dir = Path(log_dir) / PLOT_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        figures = snapshot_figures(snap, self.history)
        self.files = {stem: save_png(fig, out_dir / f"{stem}.png") for stem, fig in figures.items()}
        self.files["layers"] = out_dir / "layers.csv"
        _write_csv(self.files["layers"], snap)
        loggers = wandb_loggers(trainer)
        if loggers:
            from ..viz.wandb_objects import config_artifact, layer_table, png_image, require_wandb

            wandb = require_wandb()
            final: dict[str, Any] = {
                f"bb_final/{stem}": wandb.Image(png_image(png_bytes(fig))) for stem, fig in figures.items()
            }
            final["bb_final/layers"] = layer_table(snap)
            for logger in loggers:
                logger.log_metrics(final, step=trainer.global_step)
                if config_path is not None:
                    run = logger.experiment
                    run.log_artifact(config_artifact(config_path, run.id, metadata=dict(snap.totals)))
        return self.files

    # ----- persistence -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.history.to_dict()

    def load_state_dict(self, data: dict[str, Any] | None) -> None:
        self.history = BitHistory.from_dict(data)


__all__ = ["BitMonitor", "PLOT_DIR", "PROG_BAR", "wandb_loggers"]
