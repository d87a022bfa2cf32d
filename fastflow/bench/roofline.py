r"""How far a backend is from what the processor can do: the machine's measured matrix-multiply rate
beside each latency row.

The peak is measured in the same run, at the same thread count, as a square ``n × n`` matrix
product (``2n³`` operations): fp32 with ``torch.mm`` (MKL/oneDNN on CPUs, cuBLAS on GPUs) and int8
with ``torch._int_mm`` (int8 × int8 → int32; oneDNN on x86), from the fastest of its timed calls:
the rate the processor reaches, where a median moves with whatever else the machine runs. A row's
achieved rate is its FLOP count per call (``torch.utils.flop_counter`` on the eager model) over its
median latency,

.. math:: \text{GFLOP/s} = \frac{\text{FLOPs}}{t_{p50}} \cdot 10^{-9}, \qquad
          \text{fraction\_of\_peak} = \frac{\text{GFLOP/s}}{\text{peak of the row's precision}},

so an overhead-bound model shows a small fraction however fast its kernels are.
"""

from __future__ import annotations

from typing import Any

import torch

from fastflow.errors import ConfigError
from fastflow.utils.timing import measure_latency

#: the matrix size of the peak measurement (large enough to run at the library's best rate)
PEAK_N = 1024


def matmul_rate(device: torch.device, precision: str = "fp32", n: int = PEAK_N, iters: int = 20) -> float:
    """GFLOP/s (GOP/s for int8) of the fastest of ``iters`` ``n × n`` matrix products on ``device`` at
    the current thread count."""
    if precision == "int8":
        a = torch.randint(-127, 128, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-127, 128, (n, n), dtype=torch.int8, device=device)
        fn = lambda: torch._int_mm(a, b)  # noqa: E731
    elif precision == "fp32":
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        fn = lambda: torch.mm(a, b)  # noqa: E731
    else:
        raise ConfigError(f"unknown precision {precision!r} (fp32 or int8)")
    lat = measure_latency(fn, device, warmup=3, iters=iters)
    return 2 * n**3 / (lat.min_ms * 1e-3) / 1e9


def peaks(device: torch.device, int8: bool) -> dict[str, Any]:
    """The run's reference rates: fp32 always, int8 when an int8 row will be compared with it."""
    out: dict[str, Any] = {"n": PEAK_N, "threads": torch.get_num_threads(), "fp32_gflops": matmul_rate(device)}
    if int8:
        out["int8_gops"] = matmul_rate(device, "int8")
    return out


def add_roofline(rows: list[dict[str, Any]], peak: dict[str, Any]) -> None:
    """Add ``gflop_per_s``, ``fraction_of_peak`` against ``peak_gflops`` (the rate of the row's
    precision) and ``threads`` to every row that has ``flops`` and ``p50_ms``."""
    for r in rows:
        if not r.get("flops") or not r.get("p50_ms"):
            continue
        ref = peak["int8_gops"] if r.get("precision") == "int8" else peak["fp32_gflops"]
        r["gflop_per_s"] = r["flops"] / (r["p50_ms"] * 1e-3) / 1e9
        r["peak_gflops"], r["fraction_of_peak"] = ref, r["gflop_per_s"] / ref
        r["threads"] = peak["threads"]
