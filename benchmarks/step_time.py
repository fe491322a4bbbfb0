"""Training-step cost of Bayesian Bits vs plain fp32, measured side by side in one process.

    python benchmarks/step_time.py [--model resnet18] [--size 32] [--batch 32] [--threads 2] [--reps 15]
                                   [--optimizer sgd,adam]

Prints, per optimizer (momentum SGD and Adam by default), median step times and ratios (gated / fp32) for:

* ``init``: gates at their default start (w16a16): nearly every gate sample is exactly 0 or 1;
* ``search``: gates at log_alpha = 0 (P(z>0) = 0.83): many fractional samples, several levels per tensor;
* ``naive``: a straightforward port of the reference formulation (five STE roundings per tensor, nested residuals,
  Python branching on sampled gates), on the same gates as ``search``, for comparison;
* ``bitprune`` / ``bitprune-ch`` (opt-in via ``--variants``): BitPruning mid-search (n = 5.5 everywhere, both grids
  evaluated per site), per-tensor / per-channel weight bitlengths; ``bitprune-lr`` / ``bitprune-ch-lr`` the same with
  learned ranges (``learn_ranges=True``).

Steps are interleaved (fp32, gated, fp32, ...) so that machine noise hits all variants alike. Target (issue #2):
ratio <= 1.5 for resnet18, 32x32, batch 32, 2 threads. Never asserted in tests.
"""

from __future__ import annotations

import argparse
from typing import Any
import statistics
import time

import timm
import torch
import torch.nn.functional as F
from torch import nn

import bb_lightning  # noqa: F401
from bb_lightning.config import WrapConfig
from bb_lightning.cost.penalty import CostConfig
from bb_lightning.methods.bayesian_bits import BayesianBitsConfig, BayesianBitsRegularizer
from bb_lightning.methods.bayesian_bits import hard_concrete as hc
from bb_lightning.methods.bit_pruning import BitCostConfig, BitCostRegularizer, BitPruningConfig
from bb_lightning.wrap.swap import apply_plan, plan_layers


class NaiveBayesianBits(nn.Module):
    """Reference-style forward for comparison only: residual chain, five roundings, Python branching on gates."""

    def __init__(self, q: nn.Module) -> None:
        super().__init__()
        self.q = q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q
        if not q._initialized:
            q.init_range(x)
        u = q.x_max
        lo = -u if q._signed else torch.zeros_like(u)
        xc = torch.minimum(torch.maximum(x, lo), u * (1 - 1e-7))
        width = u - lo
        z = hc.sample(q.log_alpha)
        s = width / 3
        x_q = s * (torch.round(xc / s) - xc / s).detach() + xc  # STE round
        partial, out, prod = x_q, x_q, torch.ones(())
        for i, b in enumerate(q.bits[1:]):
            if float(z[i].detach()) == 0.0:  # host branching, as in the reference
                break
            s = s / (2 ** (b // 2) + 1)
            r = (xc - partial) / s
            e = s * ((torch.round(r) - r).detach() + r)
            partial = partial + e
            prod = prod * z[i]
            out = out + prod * e
        if q.prune_log_alpha is not None:
            out = out * hc.sample(q.prune_log_alpha).view((-1,) + (1,) * (x.dim() - 1))
        return out


def build(model_name: str, size: int, variant: str) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10)
    if variant == "fp32":
        return model, None
    records = plan_layers(model, WrapConfig(), torch.randn(1, 3, size, size))
    if variant.startswith("bitprune"):  # BitPruning mid-search: fractional bitlengths, both grids per site
        gran = "channel" if "-ch" in variant else "tensor"
        config = BitPruningConfig(init_bits=5.5, weight_granularity=gran, learn_ranges=variant.endswith("-lr"))
        modules = apply_plan(model, records, "bit_pruning", config)
        return model, BitCostRegularizer(records, modules, BitCostConfig(strength=0.1))
    gate_init = None if variant == "init" else 0.0
    modules = apply_plan(model, records, "bayesian_bits", BayesianBitsConfig(gate_init=gate_init))
    reg = BayesianBitsRegularizer(records, modules, CostConfig(strength=0.01))
    if variant == "naive":
        for m in modules.values():
            m.weight_quantizer = NaiveBayesianBits(m.weight_quantizer)
            if m.input_quantizer is not None:
                m.input_quantizer = NaiveBayesianBits(m.input_quantizer)
    return model, reg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--optimizer", default="sgd,adam", help="comma-separated: sgd (momentum 0.9), adam")
    p.add_argument("--variants", default="fp32,init,search,naive")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    for optimizer in args.optimizer.split(","):
        if optimizer not in ("sgd", "adam"):
            p.error(f"unknown optimizer {optimizer!r}; choose from sgd, adam")
        run_one(args, variants, optimizer)


def run_one(args: argparse.Namespace, variants: list[str], optimizer: str) -> None:
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    runs = {}
    for v in variants:
        model, reg = build(args.model, args.size, v)
        model.train()
        if optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        runs[v] = (model, reg, opt)

    def step(v: str) -> float:
        model, reg, opt = runs[v]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if reg is not None:
            loss = loss + reg()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    for v in variants:  # warm-up
        for _ in range(3):
            step(v)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.reps):
        for v in variants:
            times[v].append(step(v))
    med = {v: statistics.median(t) * 1e3 for v, t in times.items()}
    spread = {v: (min(t) * 1e3, max(t) * 1e3) for v, t in times.items()}
    print(f"{args.model} {args.size}x{args.size} batch {args.batch}, {args.threads} threads, {optimizer}, "
          f"median of {args.reps} interleaved steps (torch {torch.__version__})")
    base = med.get("fp32")
    for v in variants:
        ratio = f"{med[v] / base:5.2f}x fp32" if base else ""
        print(f"  {v:<7} {med[v]:8.1f} ms   {ratio}   (min {spread[v][0]:.1f}, max {spread[v][1]:.1f})")


if __name__ == "__main__":
    main()
