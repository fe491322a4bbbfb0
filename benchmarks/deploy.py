"""What the deployable model buys: ONNX file sizes and onnxruntime CPU latency, side by side, as ratios.

    python benchmarks/deploy.py [RUN_DIR] [--threads 1] [--repeats 50] [--image-size 96] [--mask-fraction 0.5]

RUN_DIR is a finished run of the default job (``bb-lightning fit --config recipes/digits_bayesian_bits.yaml``);
without it the default job is trained first (a few minutes on 2 cores). Prints:

* file size of the exported ONNX vs the float ONNX of the same model, and vs the config's ``weight_memory_bytes``
  (the file pays container rounding: 3 -> 4 and 5..7 -> 8 bits, per-channel scales, and the graph itself);
* onnxruntime CPU latency (fixed threads, warm-up, median of ``--repeats`` runs) at batch 1 and 32 of: the float
  model, the export with pruned channels kept as zero rows, the export with them removed, a w8a8 export of the same
  weights (every layer 8-bit), and PyTorch's float, fake-quant and deploy models;
* the ops of each optimized onnxruntime graph (``QLinearConv`` = int8 kernels; ``MatMulNBits``).

On CPU, sub-8-bit weights buy file size, not speed (onnxruntime dequantizes them to float each run); speed comes from
int8 weights *and* activations in fusable patterns (QLinearConv) and from removed channels. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import collections
import copy
import io
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch

from bb_lightning import MixedPrecisionConfig, apply_config
from bb_lightning.deploy import export_onnx, ort_session
from bb_lightning.deploy.runs import find_run_files, load_run_model
from bb_lightning.deploy.session import optimized_op_counts

ROOT = Path(__file__).resolve().parents[1]


def _median_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _w8a8(config: MixedPrecisionConfig) -> MixedPrecisionConfig:
    d = copy.deepcopy(config.to_dict())
    for layer in d["layers"].values():
        if layer["quantized"]:
            layer["kept_channels"] = None
            for key in ("weight", "input"):
                spec = layer[key]
                if spec is not None:
                    spec["bits"] = 8
                    spec.pop("channel_bits", None)
                    spec.pop("granularity", None)
    return MixedPrecisionConfig.from_dict(d)


def _mask_smallest(config: MixedPrecisionConfig, model: torch.nn.Module, fraction: float) -> MixedPrecisionConfig:
    """Demo only: also mask the ``fraction`` of output channels with the smallest weight norm in every quantized
    symmetric-grid layer but the last (as if the search had pruned them), to show what removal buys."""
    d = copy.deepcopy(config.to_dict())
    modules = dict(model.named_modules())
    names = [n for n, layer in d["layers"].items() if layer["quantized"] and "grid" not in layer["weight"]][:-1]
    for name in names:
        w = modules[name].weight.detach()
        norms = w.reshape(w.shape[0], -1).norm(dim=1)
        keep = norms.argsort(descending=True)[: max(1, int(round(w.shape[0] * (1 - fraction))))]
        old = d["layers"][name]["kept_channels"]
        kept = sorted(set(keep.tolist()) & (set(old) if old is not None else set(range(w.shape[0]))))
        d["layers"][name]["kept_channels"] = kept
    return MixedPrecisionConfig.from_dict(d)


def _train_default_job(root: Path) -> Path:
    from bb_lightning.app.cli import main

    with redirect_stdout(io.StringIO()):
        main(["fit", "--config", str(ROOT / "recipes" / "digits_bayesian_bits.yaml"),
              "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false"])
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", help="a finished run of the default job (default: train it now)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--image-size", type=int, default=None,
                   help="export and time at this input height/width instead of the run's (convolutional models)")
    p.add_argument("--mask-fraction", type=float, default=0.0,
                   help="demo: also mask this fraction of each layer's smallest-norm output channels")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bb_deploy_bench_"))
    run = Path(args.run_dir) if args.run_dir else _train_default_job(tmp / "run")
    files = find_run_files(run)
    config = MixedPrecisionConfig.load(files.config)
    model, example = load_run_model(files, config)
    if args.image_size:
        example = torch.zeros(1, example.shape[1], args.image_size, args.image_size)
    if args.mask_fraction > 0:
        config = _mask_smallest(config, model, args.mask_fraction)
        print(f"demo: the config also masks {100 * args.mask_fraction:.0f}% of each layer's smallest output channels")

    float_path = tmp / "float.onnx"
    torch.onnx.export(copy.deepcopy(model), (example,), str(float_path), dynamo=True, opset_version=25,
                      external_data=False, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    masked = export_onnx(model, config, tmp / "mixed_masked.onnx", example, remove_pruned=False)
    removed = export_onnx(model, config, tmp / "mixed.onnx", example)
    w8 = export_onnx(model, _w8a8(config), tmp / "w8a8.onnx", example, remove_pruned=False)
    fsize = float_path.stat().st_size
    wmb = float(config.totals.get("weight_memory_bytes", 0.0))
    print(f"run: {files.config.parent}  (model {type(model).__name__}, input {tuple(example.shape[1:])})")
    print(f"removed channels: {sum(r['removed'] for r in removed.removal)}, kept as zero rows: "
          f"{sum(r['kept_zero'] for r in removed.removal)}")
    print("\n== file size")
    print(f"{'file':<28} {'bytes':>10} {'vs float ONNX':>14} {'vs weight_memory_bytes':>23}")
    for name, size in [("float ONNX", fsize), ("mixed (zero rows kept)", masked.bytes),
                       ("mixed (channels removed)", removed.bytes), ("w8a8", w8.bytes)]:
        vs = f"{size / wmb:.2f}x" if wmb else "-"
        print(f"{name:<28} {size:>10,} {size / fsize:>13.3f}x {vs:>23}")
    print(f"config weight_memory_bytes: {wmb:,.0f} (container rounding 3->4, 5..7->8 bits, scales, graph)")

    print(f"\n== onnxruntime CPU latency, {args.threads} thread(s), median of {args.repeats} (ms)")
    fixed = apply_config(copy.deepcopy(model), config).eval()
    sessions = {"float": ort_session(float_path, threads=args.threads),
                "mixed (zero rows)": ort_session(masked.path, threads=args.threads),
                "mixed (removed)": ort_session(removed.path, threads=args.threads),
                "w8a8": ort_session(w8.path, threads=args.threads)}
    print(f"{'model':<22} {'batch 1':>9} {'ratio':>7} {'batch 32':>9} {'ratio':>7}")
    base = {}
    for name, sess in sessions.items():
        row = []
        for b in (1, 32):
            x = np.random.default_rng(0).standard_normal((b, *example.shape[1:])).astype(np.float32)
            ms = _median_ms(lambda: sess.run(None, {"input": x}), args.repeats)
            base.setdefault(b, ms)
            row.append(f"{ms:>9.3f} {ms / base[b]:>6.2f}x")
        print(f"{name:<22} {' '.join(row)}")
    print("PyTorch (ratio vs the float PyTorch model)")
    tbase = {}
    for name, m in [("torch float", model), ("torch fake-quant", fixed), ("torch deploy (removed)", removed.model)]:
        row = []
        for b in (1, 32):
            x = torch.randn(b, *example.shape[1:])
            with torch.no_grad():
                ms = _median_ms(lambda: m(x), args.repeats)
            tbase.setdefault(b, ms)
            row.append(f"{ms:>9.3f} {ms / tbase[b]:>6.2f}x")
        print(f"{name:<22} {' '.join(row)}")
    print("\n== ops in onnxruntime's optimized graph")
    for name, path in [("mixed (removed)", removed.path), ("w8a8", w8.path)]:
        ops = collections.Counter(optimized_op_counts(path, args.threads))
        keys = ["QLinearConv", "Conv", "MatMulNBits", "QLinearMatMul", "Gemm", "DequantizeLinear", "QuantizeLinear"]
        print(f"{name:<18} " + ", ".join(f"{k} {ops[k]}" for k in keys if ops[k]))


if __name__ == "__main__":
    sys.exit(main())
