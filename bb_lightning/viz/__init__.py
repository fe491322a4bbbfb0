"""Seeing where the bits go: per-layer snapshots, matplotlib figures, W&B objects and the ``report`` command.

Nothing here imports ``lightning``; `bb_lightning.plugin.monitor` connects these pieces to a Trainer.
"""
