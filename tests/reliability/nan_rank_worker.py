"""Two gloo ranks calibrate the input quantizer of every method; only rank 1's first batch holds a NaN.

Run as ``python -m reliability.nan_rank_worker OUT_DIR`` with ``tests/`` on ``PYTHONPATH``. Each rank writes
``OUT_DIR/rank<r>.json``: per method, the error it raised (or ``"no error"``). Without the NaN check reduced over the
ranks, rank 0 would wait in the range all-reduce that rank 1 never joins (until gloo's timeout).
"""

from __future__ import annotations

import json
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bb_lightning.methods.bayesian_bits import BayesianBitsConfig, BayesianBitsQuantizer
from bb_lightning.methods.bit_pruning import BitPruningConfig, BitPruningQuantizer
from bb_lightning.methods.fixed import FixedQuantizer


def _quantizers() -> dict[str, torch.nn.Module]:
    return {
        "bayesian_bits": BayesianBitsQuantizer(BayesianBitsConfig(), "input"),
        "bit_pruning": BitPruningQuantizer(BitPruningConfig(), "input"),
        "fixed": FixedQuantizer("input", 4, False, None),
    }


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=20))
    results = {}
    for name, q in _quantizers().items():
        q.layer_name = f"{name}.conv"
        x = torch.rand(4, 8) + rank
        if rank == 1:
            x[2, 3] = float("nan")
        try:
            q.train()(x)
            results[name] = "no error"
        except Exception as err:  # noqa: BLE001 - the test checks which error each rank got
            results[name] = f"{type(err).__name__}: {err}"
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, sys.argv[1]), nprocs=2)


if __name__ == "__main__":
    main()
