"""Where and how the search callback writes its result at the end of ``fit``.

* ``export_path`` given: that file; an existing file is never replaced (``<stem>-v1.json``, ... instead) unless
  ``overwrite_export``.
* otherwise, with a TensorBoard or CSV logger: ``<log_dir>/mixed_precision_config.json`` (the logger's per-version
  folder, e.g. ``lightning_logs/version_3/``);
* otherwise (no logger, or another logger): a fresh per-run folder ``<dir>/bb_lightning/version_<N>/`` where
  ``<dir>`` is the logger's ``save_dir`` or ``trainer.default_root_dir``; nothing is written into the working
  directory itself, and no ``-vN`` files pile up.

The plots of `bb_lightning.plugin.monitor` go into the same folder (``bb_plots/``). Reports go through ``logging``
(`rank_zero_info`), on rank zero only.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from .._io import unique_path
from ..export import MixedPrecisionConfig

DEFAULT_EXPORT_NAME = "mixed_precision_config.json"
RUN_FOLDER = "bb_lightning"


def log_dir_of(trainer: pl.Trainer) -> tuple[Path, bool]:
    """``(folder, is per run)``: the logger's per-version folder, or the base for a per-run folder. Call on every
    rank (``trainer.log_dir`` broadcasts under DDP)."""
    log_dir = trainer.log_dir
    per_version = bool(trainer.loggers) and isinstance(trainer.loggers[0], (TensorBoardLogger, CSVLogger))
    return Path(log_dir or trainer.default_root_dir), per_version


def new_run_dir(base: Path) -> Path:
    """Create and return the first free ``base/bb_lightning/version_<N>`` (rank zero only)."""
    root = base / RUN_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    n = len([p for p in root.iterdir() if p.name.startswith("version_")])
    while True:
        candidate = root / f"version_{n}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # another run took it meanwhile
            n += 1


def write_config(config: MixedPrecisionConfig, path: Path, overwrite: bool) -> Path:
    """Save ``config`` at ``path`` (or the next free ``-vN`` name unless ``overwrite``); returns where it went."""
    while True:
        target = path if overwrite else unique_path(path)
        try:
            return config.save(target, overwrite=overwrite)
        except FileExistsError:  # another run took the name meanwhile: try the next version
            continue


def report(method: str, config: MixedPrecisionConfig, path: Path) -> None:
    """Log the per-layer table and the file's path (rank zero)."""
    rank_zero_info(f"bb_lightning: learned mixed-precision configuration ({method})\n{config.table()}")
    rank_zero_info(f"bb_lightning: exported to {path}")


__all__ = ["DEFAULT_EXPORT_NAME", "log_dir_of", "new_run_dir", "report", "unique_path", "write_config"]
