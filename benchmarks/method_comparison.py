"""Bayesian Bits vs BitPruning vs uniform-precision baselines on the offline digits data, side by side in one run.

    python benchmarks/method_comparison.py [--epochs 30] [--model resnet10t] [--seed 0] [--only bb,bp,w8a8,...]

Every variant trains the same timm model from the same seed with the same data, epochs, optimizer and first/last-layer
policy (first layer: weights only, network input counted at 8 bits). Variants:

* ``float``: no quantization (accuracy reference);
* ``w8a8``, ``w4a4``, ``w2a2``: every weight and input at a fixed width with learned ranges (method ``fixed_bits``);
* ``bb``: Bayesian Bits as in ``recipes/digits_bayesian_bits.yaml``;
* ``bp``: BitPruning (BOPs regulariser) as in ``recipes/digits_bit_pruning.yaml``;
* ``bp-budget``: BitPruning with a hinge budget at w4a4-equivalent BOPs (1/64 of float32).

Prints one table: test accuracy, relative BOPs (% of w32a32), weight memory (KiB) and mean bits per quantized layer
(weights / inputs), plus wall time per variant. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch

import bb_lightning  # noqa: F401
from bb_lightning import BayesianBits, BitPruning, QuantizationSearch
from bb_lightning.cost.penalty import CostConfig
from bb_lightning.app.data import DigitsDataModule
from bb_lightning.app.module import TimmClassifier
from bb_lightning.methods.fixed_bits import FixedBitsConfig
from pareto import allocation_summary  # noqa: E402  (benchmarks/pareto.py: the same per-run summary)


def _variants(epochs: int) -> dict[str, Any]:
    finetune = max(1, epochs // 6)

    def fixed(bits: int) -> Any:
        return lambda: QuantizationSearch(
            FixedBitsConfig(bits, bits), CostConfig(strength=0.0), group_lrs={"ranges": 1e-3}
        )

    return {
        "float": lambda: None,
        "w8a8": fixed(8),
        "w4a4": fixed(4),
        "w2a2": fixed(2),
        "bb": lambda: BayesianBits(
            mu=0.05, gate_init=3.0, gate_lr=0.03, range_lr=1e-3, finetune_epochs=finetune
        ),
        "bp": lambda: BitPruning(
            strength=0.5, bit_lr=0.02, warmup_epochs=1, ramp_epochs=2, finetune_epochs=finetune
        ),
        "bp-budget": lambda: BitPruning(
            strength=1.0, target=1 / 64, bit_lr=0.02, warmup_epochs=1, ramp_epochs=2, finetune_epochs=finetune
        ),
    }


def run(name: str, make_cb: Any, args: argparse.Namespace, root: str) -> dict[str, Any]:
    pl.seed_everything(args.seed, verbose=False)
    model = TimmClassifier(
        model_name=args.model, num_classes=10, in_chans=1, input_size=(1, 16, 16), lr=1e-3, lr_schedule="cosine"
    )
    data = DigitsDataModule(batch_size=64, image_size=16, channels=1)
    cb = make_cb()
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        callbacks=[cb] if cb is not None else [],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=os.path.join(root, name),
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - t0
    acc = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"]
    row = {"name": name, "acc": 100 * acc, "wall": wall}
    if cb is None:
        row.update(rbops=100.0, kib=sum(p.numel() for p in model.model.parameters() if p.dim() > 1) * 4 / 1024,
                   wbits=32.0, abits=32.0)
    else:
        row.update(allocation_summary(cb.config))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated subset of variants")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    variants = _variants(args.epochs)
    names = [n for n in args.only.split(",") if n] or list(variants)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in names:
            rows.append(run(name, variants[name], args, root))
            r = rows[-1]
            print(f"[{name}] acc {r['acc']:.2f}%  rel. BOPs {r['rbops']:.3f}%  {r['kib']:.1f} KiB  {r['wall']:.0f} s",
                  flush=True)
    print(f"\n{args.model}, digits 16x16, {args.epochs} epochs, seed {args.seed}")
    print(f"{'variant':<10} {'test acc %':>10} {'rel. BOPs %':>12} {'weights KiB':>12} {'w bits':>7} {'a bits':>7} "
          f"{'time s':>7}")
    for r in rows:
        print(f"{r['name']:<10} {r['acc']:>10.2f} {r['rbops']:>12.3f} {r['kib']:>12.1f} {r['wbits']:>7.2f} "
              f"{r['abits']:>7.2f} {r['wall']:>7.0f}")


if __name__ == "__main__":
    main()
