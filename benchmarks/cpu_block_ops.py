"""The CPU block kernel's op alone, fp32 against int8: one 3×3 convolution with GroupNorm + SiLU in front, per
shape and thread count, median of ``--iters`` calls after 5 (time from Python; the op's own cost dominates at
these sizes). Run on an idle machine::

    python benchmarks/cpu_block_ops.py --threads 1,2 --out cpu-block-ops.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from fastflow.cli.argtypes import int_list, positive_int
from fastflow.fused.cpu_block import conv_block
from fastflow.fused.cpu_block_q8 import conv_block_q8, int8_levels, quantize_weight
from fastflow.utils.io import atomic_write_json
from fastflow.utils.threads import device_name

#: (batch, channels, map size): slim-15.7m's 32×32 and 16×16 levels at batch 1, the digits student's at batch 8
SHAPES = ((1, 128, 32), (1, 256, 16), (8, 32, 16), (1, 64, 4))


def _median_us(fn: Callable[[], Any], iters: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def measure(threads: list[int], iters: int) -> list[dict[str, Any]]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for n, c, h in SHAPES:
        x, w = torch.randn(n, c, h, h, generator=g), torch.randn(c, c, 3, 3, generator=g) * 0.1
        bias, norm = torch.randn(c, generator=g), (torch.ones(c), torch.zeros(c), min(32, c // 4), 1e-5)
        qweight, w_scale = quantize_weight(w)
        for t in threads:
            torch.set_num_threads(t)
            with torch.no_grad():
                fp32 = _median_us(partial(conv_block, x, w, bias, norm), iters)
                int8 = _median_us(partial(conv_block_q8, x, qweight, w_scale, bias, norm), iters)
            rows.append({"batch": n, "channels": c, "size": h, "threads": t, "fp32_us": fp32, "int8_us": int8,
                         "gop": 2 * n * c * c * 9 * h * h / 1e9})
            print(f"batch {n}, {c} channels, {h}×{h}, {t} thread(s): fp32 {fp32:.0f} µs, int8 {int8:.0f} µs")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int_list, default=[1, 2])
    p.add_argument("--iters", type=positive_int, default=100)
    p.add_argument("--out", default="cpu-block-ops.json")
    args = p.parse_args()
    rows = measure(args.threads, args.iters)
    atomic_write_json(args.out, {"device": device_name(torch.device("cpu")), "int8_levels": int8_levels(),
                                 "torch": torch.__version__, "rows": rows,
                                 "command": f"python benchmarks/cpu_block_ops.py --threads "
                                            f"{','.join(map(str, args.threads))} --iters {args.iters}"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
