"""Reliability tests run tiny models: one intra-op thread is faster than two on a shared 2-core machine (no
OpenMP spin-waiting against other processes) and makes the bit-for-bit comparisons independent of thread timing."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
