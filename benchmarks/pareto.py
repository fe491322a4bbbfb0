"""Learned vs uniform precision on Fashion-MNIST: accuracy against relative BOPs, with each method's Pareto front.

    python benchmarks/pareto.py --model bb_lenet5 --epochs 5 --seeds 0 --out runs/pareto_lenet5
    python benchmarks/pareto.py --model test_resnet --epochs 5 --train-subset 10000 --out runs/pareto_resnet
    python benchmarks/pareto.py --out runs/pareto_lenet5 --report-only      # table + PNG from the stored results

Every variant trains the same model from the same seed on the same data (`FashionMNISTDataModule`, optionally a
fixed class-balanced training subset), for the same epochs, with the same optimizer (Adam 1e-3, cosine schedule on
the weights, batch 128), the same first/last-layer policy (the callbacks' defaults: first layer weights only, its
input counted at 8 bits; classifier quantized, never pruned) and the same BatchNorm folding (``--fold-bn``; use
``train`` for models with BatchNorm: without folding, a pruning gate in front of a BatchNorm in training mode only
scales a channel that the batch statistics normalise again, so the task loss cannot defend the channel). Variants:

* ``float``: no quantization;
* ``w8a8``, ``w6a6``, ``w4a4``, ``w3a3``, ``w2a2``: every weight and input at a fixed width, learned ranges
  (method ``fixed_bits``);
* ``bb-<mu>``: ``BayesianBits(mu=mu)``, every other argument at its default (gate learning rate and fine-tuning
  tail derived from the run's length);
* ``bbe-<mu>``: ``BayesianBits(mu=mu, regularizer="expected_bops")``: ``mu`` times the expected relative BOPs in
  percent (the product of weight and input bits) instead of the paper's additive penalty;
* ``bbq-<mu>``: ``BayesianBits(mu=mu, prune=False)``: quantization only, no 0-bit (pruning) gates (the reference
  code's ablation without ``--include-pruning``, Bayesian Bits spec 5.6); it cannot go below w2a2's BOPs;
* ``bp-<lambda>``: ``BitPruning(strength=lambda)``, likewise;
* ``bp1-<lambda>``: ``BitPruning(strength=lambda, min_bits=1)``: bitlengths may go down to 1 (the spec's range is
  1 ... n_max; the default floor is 2), the only way BitPruning, which prunes no channels, can go below w2a2;
* ``bpr-<lambda>``: ``BitPruning(strength=lambda, learn_ranges=True)``: ranges learned from their min-max start, as
  the uniform baselines' are, instead of the paper's min-max statistics (spec R3); ``bpr1-<lambda>`` adds
  ``min_bits=1``;
* ``bprs-<lambda>``: ``BitPruning(strength=lambda, learn_ranges=True, weight_grid="symmetric")``: learned ranges, and
  the weights on the symmetric grid with 0 as a level (Bayesian Bits' and the uniform baselines' weight grid);
* ``mm<b>`` (diagnostic, ``--minmax-bits``): every site fixed at ``b`` bits on BitPruning's min-max grid
  (``BitPruning(strength=0, init_bits=b, min_bits=b, max_bits=b)``), i.e. the uniform baseline without learned ranges;
* ``mmr<b>`` (diagnostic, ``--minmax-learned-bits``): the same with ``learn_ranges=True``, i.e. the uniform baseline
  with BitPruning's learned-range quantizer (``lo``/``hi`` on an affine grid) in place of ``fixed_bits``' (one
  symmetric or unsigned ``x_max``);
* ``rt-<variant>`` (diagnostic, ``--retrain``): the allocation (bit widths, pruned channels) that the stored run of
  ``<variant>`` with the same seed exported, trained from scratch as a fixed network with the uniform baselines'
  quantizer and range learning rate (``FixedGateFinetune(config=..., ranges="data", range_lr=1e-3)``). It separates
  what the search costs (noisy gates, short fixed-width tail) from what the allocation can reach. Bayesian Bits and
  uniform variants only (min-max grids have no range to calibrate).

Each finished run is appended to ``<out>/results.jsonl`` (so interrupted sweeps resume and several processes can
share a folder) with its exported config, so its costs can be recounted (``--recount``) when the counting rules
change; rows of pruned models without a config, written before input-side pruning was credited (spec 4.1,
``rho_in``), are left out. The script then prints the table (test accuracy as mean +- std over seeds, relative
BOPs, weight memory, pruned channel fraction, wall time) and writes ``<out>/pareto.png`` (accuracy vs relative BOPs,
log x, the Pareto front of each method). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

UNIFORM = (8, 6, 4, 3, 2)


def _variants(
    bb_strengths: list[float], bp_strengths: list[float], fold_bn: str = "none", bbe_strengths: tuple[float, ...] = (),
    bp1_strengths: tuple[float, ...] = (), minmax_bits: tuple[int, ...] = (), bpr_strengths: tuple[float, ...] = (),
    bpr1_strengths: tuple[float, ...] = (), range_lr: float | None = None,
    minmax_learned_bits: tuple[int, ...] = (), bbq_strengths: tuple[float, ...] = (),
    bprs_strengths: tuple[float, ...] = (),
) -> dict[str, Callable[[], Any]]:
    from bb_lightning import BayesianBits, BitPruning, QuantizationSearch
    from bb_lightning.cost.penalty import CostConfig
    from bb_lightning.methods.fixed_bits import FixedBitsConfig

    def fixed(bits: int) -> Callable[[], Any]:
        return lambda: QuantizationSearch(
            FixedBitsConfig(bits, bits), CostConfig(strength=0.0), fold_bn=fold_bn,
            group_lrs={} if range_lr is None else {"ranges": range_lr},  # unset: derived, as the methods' are
        )

    out: dict[str, Callable[[], Any]] = {"float": lambda: None}
    out.update({f"w{b}a{b}": fixed(b) for b in UNIFORM})
    kw: dict[str, Any] = {"fold_bn": fold_bn, "range_lr": range_lr}
    out.update({f"bb-{mu:g}": (lambda mu=mu: BayesianBits(mu=mu, **kw)) for mu in bb_strengths})
    out.update({f"bbe-{mu:g}": (lambda mu=mu: BayesianBits(mu=mu, regularizer="expected_bops", **kw))
                for mu in bbe_strengths})
    out.update({f"bbq-{mu:g}": (lambda mu=mu: BayesianBits(mu=mu, prune=False, **kw)) for mu in bbq_strengths})
    out.update({f"bp-{lam:g}": (lambda lam=lam: BitPruning(strength=lam, **kw)) for lam in bp_strengths})
    out.update({f"bp1-{lam:g}": (lambda lam=lam: BitPruning(strength=lam, min_bits=1.0, **kw))
                for lam in bp1_strengths})
    out.update({f"bpr-{lam:g}": (lambda lam=lam: BitPruning(strength=lam, learn_ranges=True, **kw))
                for lam in bpr_strengths})
    out.update({f"bprs-{lam:g}": (lambda lam=lam: BitPruning(strength=lam, learn_ranges=True, weight_grid="symmetric",
                                                            **kw))
                for lam in bprs_strengths})
    out.update({f"bpr1-{lam:g}": (lambda lam=lam: BitPruning(strength=lam, learn_ranges=True, min_bits=1.0, **kw))
                for lam in bpr1_strengths})
    out.update({f"mm{b}": (lambda b=b: BitPruning(strength=0.0, init_bits=b, min_bits=b, max_bits=b, **kw))
                for b in minmax_bits})
    out.update({f"mmr{b}": (lambda b=b: BitPruning(strength=0.0, init_bits=b, min_bits=b, max_bits=b,
                                                   learn_ranges=True, **kw))
                for b in minmax_learned_bits})
    return out


#: variant name prefix -> family (longest prefixes first, so "bpr1-" wins over "bpr-" and "bp")
FAMILIES = (
    ("bbe-", "Bayesian Bits, E[BOPs]"), ("bbq-", "Bayesian Bits, quantization only"), ("bb-", "Bayesian Bits"),
    ("bpr1-", "BitPruning, learned ranges, min 1 bit"), ("bprs-", "BitPruning, learned ranges, symmetric weights"),
    ("bpr-", "BitPruning, learned ranges"), ("bp1-", "BitPruning, min 1 bit"), ("bp-", "BitPruning"),
    ("mmr", "uniform, min-max, learned ranges"), ("mm", "uniform, min-max"), ("rt-", "retrained allocation"),
)


#: the searched families, in table order
LEARNED = ("Bayesian Bits", "Bayesian Bits, E[BOPs]", "Bayesian Bits, quantization only", "BitPruning",
           "BitPruning, min 1 bit", "BitPruning, learned ranges", "BitPruning, learned ranges, symmetric weights",
           "BitPruning, learned ranges, min 1 bit")


def family(name: str) -> str:
    """``"float"``, ``"uniform"`` (``w<b>a<b>``) or the family of the variant's prefix (`FAMILIES`)."""
    if name == "float":
        return "float"
    return next((fam for prefix, fam in FAMILIES if name.startswith(prefix)), "uniform")


def run(
    name: str, make_cb: Callable[[], Any], seed: int, args: argparse.Namespace, root: str,
    allocation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and test one variant; ``allocation``: an exported config (``to_dict``) to train as a fixed network."""
    import lightning.pytorch as pl

    from bb_lightning import MixedPrecisionConfig
    from bb_lightning.app.fashion_mnist import FashionMNISTDataModule
    from bb_lightning.app.module import TimmClassifier
    from bb_lightning.plugin import FixedGateFinetune
    from bb_lightning.plugin.schedule import DEFAULT_GROUP_LRS

    pl.seed_everything(seed, verbose=False)
    model = TimmClassifier(
        model_name=args.model, num_classes=10, in_chans=1, input_size=(1, 28, 28), lr=1e-3, lr_schedule="cosine"
    )
    data = FashionMNISTDataModule(
        data_dir=args.data_dir, batch_size=args.batch_size, train_subset=args.train_subset,
        test_subset=args.test_subset, seed=0,  # the same subset for every variant and seed
    )
    fixed = None if allocation is None else MixedPrecisionConfig.from_dict(allocation)
    cb = make_cb()
    if fixed is not None:  # ranges in their own group at a constant rate, as the uniform baselines' are
        path = os.path.join(root, f"{name}-{seed}-allocation.json")
        fixed.save(path)
        cb = FixedGateFinetune(config=path, ranges="data", range_lr=args.range_lr or DEFAULT_GROUP_LRS["ranges"])
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, callbacks=[cb] if cb is not None else [],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=os.path.join(root, f"{name}-{seed}"),
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - t0
    acc = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"]
    row: dict[str, Any] = {"name": name, "seed": seed, "acc": 100 * acc, "wall": wall, "model": args.model,
                           "epochs": args.epochs, "train_subset": args.train_subset, "steps": trainer.global_step,
                           "fold_bn": args.fold_bn}
    if args.range_lr is not None:
        row["range_lr"] = args.range_lr
    if fixed is not None:
        row.update(allocation_summary(fixed), config=allocation, layers=layer_bits(fixed))
        return row
    if cb is None:
        params = sum(p.numel() for m in model.model.modules() if hasattr(m, "weight") and m.weight is not None
                     and m.weight.dim() > 1 for p in [m.weight])
        row.update(rbops=100.0, kib=params * 4 / 1024, pruned=0.0, wbits=32.0, abits=32.0)
        return row
    row.update(allocation_summary(cb.config))
    row["config"] = cb.config.to_dict()
    row["layers"] = layer_bits(cb.config)
    return row


def layer_bits(config: Any) -> dict[str, list[int | None]]:
    """``{layer: [weight bits, input bits]}`` of the quantized layers of an exported config."""
    return {k: [v["weight"]["bits"] if v["weight"] else None, v["input"]["bits"] if v["input"] else None]
            for k, v in config.layers.items() if v["quantized"]}


def allocation_summary(config: Any) -> dict[str, float]:
    """Relative BOPs (%), weight memory (KiB), pruned channels (%) and mean weight / input bits per quantized layer
    (per-channel widths averaged) of an exported `MixedPrecisionConfig`."""
    totals = config.totals
    quantized = [layer for layer in config.layers.values() if layer["quantized"]]
    inputs = [layer["input"]["bits"] for layer in quantized if layer["input"] is not None]

    def wbits(layer: dict) -> float:
        per_channel = layer["weight"].get("channel_bits")
        return sum(per_channel) / len(per_channel) if per_channel else float(layer["weight"]["bits"])

    return dict(
        rbops=100 * totals["relative_bops"], kib=totals["weight_memory_bytes"] / 1024,
        pruned=100 * totals.get("pruned_channel_fraction", 0.0),
        wbits=sum(wbits(layer) for layer in quantized) / len(quantized), abits=sum(inputs) / max(len(inputs), 1),
    )


def current(row: dict[str, Any]) -> bool:
    """False for a pruned model's row counted before input-side pruning was credited (no config to recount)."""
    return row.get("pruned", 0.0) == 0.0 or "config" in row


def recount(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its cost columns recomputed from its stored config by the current cost rules."""
    from bb_lightning.cost.facts import config_costs, cost_totals
    from bb_lightning.export.config import MixedPrecisionConfig

    if "config" not in row:
        return row
    config = MixedPrecisionConfig.from_dict(row["config"])
    config.totals = cost_totals(config_costs(config))
    return {**row, **allocation_summary(config)}


def load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if current(r)]


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per variant: mean and sample std of accuracy (and BOPs) over its seeds."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    out = []
    for name, rs in by_name.items():
        accs = [r["acc"] for r in rs]
        out.append({
            "name": name, "family": family(name), "n": len(rs), "acc": statistics.mean(accs),
            "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "rbops": statistics.mean(r["rbops"] for r in rs), "kib": statistics.mean(r["kib"] for r in rs),
            "pruned": statistics.mean(r["pruned"] for r in rs), "wall": statistics.mean(r["wall"] for r in rs),
            "wbits": statistics.mean(r["wbits"] for r in rs), "abits": statistics.mean(r["abits"] for r in rs),
            "seeds": sorted(r["seed"] for r in rs),
        })
    families = ("float", "uniform", "uniform, min-max", "uniform, min-max, learned ranges", *LEARNED,
                "retrained allocation")
    order = {fam: i for i, fam in enumerate(families)}
    return sorted(out, key=lambda a: (order[a["family"]], -a["rbops"]))


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points not dominated by a point with no more BOPs and higher accuracy, by increasing BOPs."""
    front: list[dict[str, Any]] = []
    for p in sorted(points, key=lambda p: (p["rbops"], -p["acc"])):
        if not front or p["acc"] > front[-1]["acc"]:
            front.append(p)
    return front


def dominates(learned: list[dict[str, Any]], uniform: list[dict[str, Any]]) -> list[str]:
    """The uniform variants for which no learned point has at least their accuracy at no more BOPs."""
    return [u["name"] for u in uniform
            if not any(p["rbops"] <= u["rbops"] and p["acc"] >= u["acc"] for p in learned)]


def table(aggs: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| variant | seeds | test accuracy % | relative BOPs % | weight memory KiB | mean w / a bits | "
             "pruned channels % | wall time s |",
             "|---|---|---|---|---|---|---|---|"]
    for a in aggs:
        acc = f"{a['acc']:.2f}" + (f" ± {a['acc_std']:.2f}" if a["n"] > 1 else "")
        lines.append(f"| {a['name']} | {a['n']} | {acc} | {a['rbops']:.3f} | {a['kib']:.1f} | "
                     f"{a['wbits']:.2f} / {a['abits']:.2f} | {a['pruned']:.1f} | {a['wall']:.0f} |")
    uniform = [a for a in aggs if a["family"] == "uniform"]
    lines.append("")
    for fam in LEARNED:
        pts = [a for a in aggs if a["family"] == fam]
        if not pts or not uniform:
            continue
        missed = dominates(pts, uniform)
        front = ", ".join(f"{p['name']} ({p['acc']:.2f}% @ {p['rbops']:.3f}%)" for p in pareto_front(pts))
        lines.append(f"{fam}: front {front}; dominates the uniform front: "
                     + ("yes" if not missed else f"no (not matched: {', '.join(missed)})"))
    by = {a["name"]: a for a in aggs}
    if "w2a2" in by and "w4a4" in by:
        hits = [a["name"] for a in aggs if a["family"].startswith("Bayesian Bits")
                and a["rbops"] <= by["w2a2"]["rbops"] and a["acc"] >= by["w4a4"]["acc"]]
        lines.append(f"Bayesian Bits at <= w2a2 BOPs ({by['w2a2']['rbops']:.3f}%) with >= w4a4 accuracy "
                     f"({by['w4a4']['acc']:.2f}%): " + (", ".join(hits) if hits else "none"))
    return "\n".join(lines)


def plot(aggs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    styles = {"uniform": ("tab:gray", "s"), "Bayesian Bits": ("tab:blue", "o"),
              "Bayesian Bits, E[BOPs]": ("tab:green", "D"), "Bayesian Bits, quantization only": ("navy", "h"),
              "BitPruning": ("tab:orange", "^"),
              "BitPruning, min 1 bit": ("tab:red", "v"), "BitPruning, learned ranges": ("tab:purple", "P"),
              "BitPruning, learned ranges, min 1 bit": ("tab:pink", "X"),
              "BitPruning, learned ranges, symmetric weights": ("darkorange", "P"),
              "uniform, min-max": ("tab:brown", "x"),
              "uniform, min-max, learned ranges": ("tab:cyan", "x"),
              "retrained allocation": ("tab:olive", "*")}
    for fam, (color, marker) in styles.items():
        pts = [a for a in aggs if a["family"] == fam]
        if not pts:
            continue
        ax.errorbar([p["rbops"] for p in pts], [p["acc"] for p in pts], yerr=[p["acc_std"] for p in pts],
                    fmt=marker, color=color, label=fam, alpha=0.9, capsize=2)
        front = pareto_front(pts)
        ax.step([p["rbops"] for p in front], [p["acc"] for p in front], where="post", color=color, alpha=0.6)
        if fam == "uniform":
            for p in pts:
                ax.annotate(p["name"], (p["rbops"], p["acc"]), textcoords="offset points", xytext=(4, -10),
                            fontsize=7, color=color)
    for a in aggs:
        if a["family"] == "float":
            ax.axhline(a["acc"], color="k", ls="--", lw=0.8, label=f"float ({a['acc']:.2f}%)")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
    ax.set_xlabel("relative BOPs (% of w32a32, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title.replace(", Adam", ",\nAdam"), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bb_lenet5", help="bb_lenet5 or any timm model taking 1x28x28")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-subset", type=int, default=0, help="fixed class-balanced training subset; 0 = all")
    parser.add_argument("--test-subset", type=int, default=0)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--bb-strengths", default="0.003,0.01,0.03,0.1")
    parser.add_argument("--bbe-strengths", default="", help="mu of Bayesian Bits with regularizer='expected_bops'")
    parser.add_argument("--bbq-strengths", default="", help="mu of Bayesian Bits with prune=False")
    parser.add_argument("--bp-strengths", default="0.03,0.1,0.3,1")
    parser.add_argument("--bp1-strengths", default="", help="lambda of BitPruning with min_bits=1")
    parser.add_argument("--bpr-strengths", default="", help="lambda of BitPruning with learn_ranges=True")
    parser.add_argument("--bprs-strengths", default="",
                        help="lambda of BitPruning, learn_ranges=True, weight_grid='symmetric'")
    parser.add_argument("--bpr1-strengths", default="", help="lambda of BitPruning, learn_ranges=True, min_bits=1")
    parser.add_argument("--minmax-bits", default="",
                        help="widths of the diagnostic `mm<b>`: every site at b bits on BitPruning's min-max grid")
    parser.add_argument("--minmax-learned-bits", default="",
                        help="widths of the diagnostic `mmr<b>`: `mm<b>` with BitPruning's learned ranges")
    parser.add_argument("--retrain", default="",
                        help="comma-separated stored variants whose exported allocation `rt-<variant>` trains from "
                             "scratch (same seed; diagnostic)")
    parser.add_argument("--only", default="", help="comma-separated subset of variants (e.g. float,w4a4,bb-0.01)")
    parser.add_argument("--fold-bn", default="none", choices=["none", "train", "static"],
                        help="BatchNorm folding of every quantized variant (the callbacks' fold_bn)")
    parser.add_argument("--range-lr", type=float, default=None,
                        help="one learning rate for every variant's ranges, weights' and inputs' (default: each "
                             "range group's max(1e-3, median calibrated range / (0.25 * optimizer steps)), as the "
                             "callbacks derive it; `rt-` variants: 1e-3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/pareto", help="folder for results.jsonl and pareto.png")
    parser.add_argument("--report-only", action="store_true", help="only print the table and write the PNG")
    parser.add_argument("--recount", action="store_true",
                        help="recompute every stored row's costs from its config by the current rules (in place)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    if not args.report_only:
        import torch

        import bb_lightning  # noqa: F401  (registers bb_lenet5)

        torch.set_num_threads(args.threads)
        warnings.filterwarnings("ignore")
        variants = _variants([float(v) for v in args.bb_strengths.split(",") if v],
                             [float(v) for v in args.bp_strengths.split(",") if v], args.fold_bn,
                             tuple(float(v) for v in args.bbe_strengths.split(",") if v),
                             tuple(float(v) for v in args.bp1_strengths.split(",") if v),
                             tuple(int(v) for v in args.minmax_bits.split(",") if v),
                             tuple(float(v) for v in args.bpr_strengths.split(",") if v),
                             tuple(float(v) for v in args.bpr1_strengths.split(",") if v), args.range_lr,
                             tuple(int(v) for v in args.minmax_learned_bits.split(",") if v),
                             tuple(float(v) for v in args.bbq_strengths.split(",") if v),
                             tuple(float(v) for v in args.bprs_strengths.split(",") if v))
        retrain = [v for v in args.retrain.split(",") if v]
        variants.update({f"rt-{v}": (lambda: None) for v in retrain})
        names = [n for n in args.only.split(",") if n] or list(variants)
        unknown = sorted(set(names) - set(variants))
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; known: {sorted(variants)}")
        names.sort(key=lambda n: n.startswith("rt-"))  # sources first, so that an `rt-` variant can retrain them
        minmax = [v for v in retrain if family(v).startswith(("uniform, min-max", "BitPruning"))]
        if minmax:
            raise SystemExit(f"--retrain {','.join(minmax)}: min-max-grid allocations (BitPruning, mm<b>) cannot "
                             "be retrained with calibrated ranges; retrain Bayesian Bits or uniform variants")
        seeds = [int(s) for s in args.seeds.split(",") if s]
        stored = {(r["name"], r["seed"]): r for r in load(results)
                  if r["model"] == args.model and r["epochs"] == args.epochs and r["train_subset"] == args.train_subset
                  and r.get("fold_bn", "none") == args.fold_bn and r.get("range_lr") == args.range_lr}
        with tempfile.TemporaryDirectory() as root:
            for seed in seeds:
                for name in names:
                    if (name, seed) in stored:
                        continue
                    allocation = None
                    if name.startswith("rt-"):
                        source = stored.get((name[3:], seed))
                        if source is None or "config" not in source:
                            raise SystemExit(f"{name}: no stored run of {name[3:]} with seed {seed} and a config "
                                             f"in {results} (run it first)")
                        allocation = source["config"]
                    r = run(name, variants[name], seed, args, root, allocation)
                    stored[(name, seed)] = r  # an `rt-` variant later in this sweep may retrain it
                    with results.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(f"[{name} seed {seed}] acc {r['acc']:.2f}%  rel. BOPs {r['rbops']:.3f}%  "
                          f"{r['kib']:.1f} KiB  pruned {r['pruned']:.1f}%  {r['wall']:.0f} s", flush=True)
    if args.recount:
        rows = [recount(r) for r in load(results)]
        results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = load(results)
    if not rows:
        raise SystemExit(f"no results in {results}")
    r0 = rows[0]
    subset = f", {r0['train_subset']} training images" if r0["train_subset"] else ""
    header = (f"{r0['model']}, Fashion-MNIST{subset}, {r0['epochs']} epochs ({r0['steps']} steps), Adam 1e-3 cosine, "
              f"fold_bn={r0.get('fold_bn', 'none')}"
              + (f", range lr {r0['range_lr']:g}" if r0.get("range_lr") else ", range lrs derived"))
    aggs = aggregate(rows)
    print(table(aggs, header))
    plot(aggs, out / "pareto.png", header)
    print(f"\nplot: {out / 'pareto.png'}")


if __name__ == "__main__":
    main()
