"""Latency measurement, the one timing primitive of the benches, the evaluation and the demo:
warm-up, then per-call times from CUDA events (GPU) or ``perf_counter`` (CPU); percentiles over
the calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass
class Latency:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    calls: int
    min_ms: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def measure_latency(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 3,
                    iters: int = 20, min_time_s: float = 0.0) -> Latency:
    """Time ``fn()``; runs at least ``iters`` calls and at least ``min_time_s`` seconds."""
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < min_time_s:
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q = torch.tensor(times, dtype=torch.float64)
    p = torch.quantile(q, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    return Latency(p[0], p[1], p[2], float(q.mean()), len(times), float(q.min()))
