"""Kernel benchmarks (``fastflow bench kernels``, ``benchmarks/test_kernels.py``): the fused
GroupNorm(+SiLU) and attention kernels against eager PyTorch, ``torch.compile`` and every SDPA
backend, on the UNet shape set, all in one run.

Timing: ``triton.testing.do_bench`` (CUDA events, median, warm-up and repeats in ms). GroupNorm
reports GB/s over the bytes it must move (read x, write y) and the ratio to a measured
device-to-device copy of the same tensor (the bandwidth ceiling); attention reports TFLOP/s over
``4·B·H·Lq·Lk·D`` (forward; ×3.5 with the backward). Every row also carries the bytes it must
move, its FLOPs and the lower-bound time ``max(FLOPs / matmul peak, bytes / copy peak)`` at the
device's ceilings measured in the same run (a 256 MiB copy, an 8192³ matmul in the dtype), and
``fraction_of_bound`` = bound / measured time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fastflow.fused.ops import attention, group_norm
from fastflow.models import build_model
from fastflow.models.layers import GroupNormAct
from fastflow.models.presets import sample_shape
from fastflow.models.reference import group_norm_ref
from fastflow.utils.timing import measure_latency

#: Stable Diffusion 1.5's UNet: GroupNorm widths and resolutions at 512² (latent 64²), CFG batch 2.
SD15_GN = [(2, c, hw, hw) for c in (320, 640, 1280) for hw in (64, 32, 16, 8)]
#: (B, heads, Lq, Lk, head dim): self-attention 64…4096 tokens, cross-attention to 77 text tokens.
ATTN_SHAPES = ([(2, 8, s, s, d) for s in (64, 256, 1024, 4096) for d in (40, 64, 80, 128, 160)]
               + [(2, 8, s, 77, d) for s in (256, 1024, 4096) for d in (40, 80, 160)])
QUICK_GN = [(1, 32, 4, 4), (2, 40, 3, 5)]
QUICK_ATTN = [(1, 2, 16, 16, 40), (1, 2, 16, 7, 64)]


def unet_gn_shapes(presets: tuple[str, ...] = ("slim-15.7m", "rf-ddpmpp"),
                   batches: tuple[int, ...] = (1, 16, 128)) -> list[tuple[int, int, int, int]]:
    """Every distinct GroupNorm input ``(N, C, H, W)`` of our presets at the given batch sizes."""
    shapes: set[tuple[int, int, int]] = set()
    for name in presets:
        model = build_model({"preset": name}).eval()
        hooks = [m.register_forward_hook(lambda m, i, o: shapes.add(tuple(i[0].shape[1:])))
                 for m in model.modules() if isinstance(m, GroupNormAct)]
        with torch.no_grad():
            model(torch.zeros(1, *sample_shape(model)), torch.zeros(1))
        for h in hooks:
            h.remove()
    return sorted((b, c, h, w) for b in batches for c, h, w in shapes)


def _time(fn: Callable[[], Any], device: torch.device) -> float:
    """Median milliseconds per call."""
    if device.type != "cuda":  # interpreter plumbing runs only: the timing means nothing
        return measure_latency(fn, device, warmup=1, iters=1).p50_ms
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def _eager_group_norm_silu(x: Tensor, groups: int, weight: Tensor, bias: Tensor) -> Tensor:
    return F.silu(F.group_norm(x, groups, weight, bias, 1e-5))


def _timed_call(op: Callable[..., Tensor], inputs: tuple[Tensor, ...], grad: Tensor | None) -> Callable[[], Any]:
    """``op(*inputs)``, and with ``grad`` its backward to the inputs too, as a closure to time."""
    if grad is None:
        return partial(op, *inputs)
    return lambda: torch.autograd.grad(op(*inputs), inputs, grad)


def _geomean(xs: list[float]) -> float:
    xs = [x for x in xs if x and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def device_ceilings(device: torch.device, dtype: torch.dtype, quick: bool = False) -> dict[str, float]:
    """Measured copy bandwidth (GB/s, read + write) and matmul throughput (TFLOP/s) in ``dtype``."""
    n = (1 << 14) if quick else (1 << 27) // torch.finfo(dtype).bits * 8  # 256 MiB (a plumbing size when quick)
    src = torch.empty(n, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    copy_ms = _time(lambda: dst.copy_(src), device)
    m = 64 if quick else 8192
    a, b = torch.randn(m, m, device=device, dtype=dtype), torch.randn(m, m, device=device, dtype=dtype)
    mm_ms = _time(lambda: a @ b, device)
    return {"copy_GBps": 2 * src.numel() * src.element_size() / copy_ms / 1e6,
            "matmul_TFLOPs": 2 * m ** 3 / mm_ms / 1e9}


def _bound(row: dict[str, Any], nbytes: float, flops: float, ceilings: dict[str, float] | None) -> None:
    """Add bytes, FLOPs, the lower-bound time at the ceilings and the fraction of it reached."""
    row.update(bytes=nbytes, flops=flops)
    if ceilings:
        bound = max(flops / (ceilings["matmul_TFLOPs"] * 1e9), nbytes / (ceilings["copy_GBps"] * 1e6))
        row.update(lower_bound_ms=bound, fraction_of_bound=bound / row["fused_ms"])


def bench_group_norm(shapes: list[tuple[int, int, int, int]], dtype: torch.dtype, device: torch.device,
                     groups: int = 32, compiled: bool = True,
                     ceilings: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """GroupNorm+SiLU forward (NCHW): fused vs eager ``group_norm`` then ``silu`` vs compiled reference."""
    rows = []
    ref_c = torch.compile(group_norm_ref, dynamic=True) if compiled and device.type == "cuda" else None
    for n, c, h, w in shapes:
        g = math.gcd(groups, c)
        x = torch.randn(n, c, h, w, device=device, dtype=dtype)
        wt, bs = torch.randn(c, device=device, dtype=dtype), torch.randn(c, device=device, dtype=dtype)
        out = torch.empty_like(x)
        nbytes = 2 * x.numel() * x.element_size()
        t = {"fused": _time(partial(group_norm, x, wt, bs, g, 1e-5, silu=True), device),
             "eager": _time(partial(_eager_group_norm_silu, x, g, wt, bs), device),
             "copy": _time(partial(out.copy_, x), device)}
        if ref_c is not None:
            t["compiled"] = _time(partial(ref_c, x, wt, bs, g, 1e-5, None, None, True), device)
        row = {"op": "group_norm+silu", "shape": [n, c, h, w], "groups": g, "dtype": str(dtype).split(".")[-1],
               "fused_ms": t["fused"], "eager_ms": t["eager"], "copy_ms": t["copy"],
               "fused_GBps": nbytes / t["fused"] / 1e6, "copy_GBps": nbytes / t["copy"] / 1e6,
               "speedup_vs_eager": t["eager"] / t["fused"], "fraction_of_copy_bw": t["copy"] / t["fused"]}
        if "compiled" in t:
            row.update(compiled_ms=t["compiled"], speedup_vs_compiled=t["compiled"] / t["fused"])
        _bound(row, nbytes, 12 * x.numel(), ceilings)  # ~12 flops/element (stats, affine, SiLU): bandwidth-bound
        rows.append(row)
    return rows


def _sdpa_backends() -> dict[str, Any]:
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def bench_attention(shapes: list[tuple[int, int, int, int, int]], dtype: torch.dtype, device: torch.device,
                    backward: bool = False, ceilings: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Attention (forward, or forward + backward) vs each SDPA backend that takes the case."""
    from torch.nn.attention import sdpa_kernel

    rows = []
    for b, h, lq, lk, d in shapes:
        q = torch.randn(b, h, lq, d, device=device, dtype=dtype, requires_grad=backward)
        k = torch.randn(b, h, lk, d, device=device, dtype=dtype, requires_grad=backward)
        v = torch.randn(b, h, lk, d, device=device, dtype=dtype, requires_grad=backward)
        do = torch.randn(b, h, lq, d, device=device, dtype=dtype)

        run = partial(_timed_call, inputs=(q, k, v), grad=do if backward else None)

        flops = 4 * b * h * lq * lk * d * (3.5 if backward else 1.0)
        row: dict[str, Any] = {"op": "attention" + ("+bwd" if backward else ""), "shape": [b, h, lq, lk, d],
                               "dtype": str(dtype).split(".")[-1], "cross": lq != lk}
        with torch.no_grad() if not backward else torch.enable_grad():
            row["fused_ms"] = _time(run(attention), device)
            if device.type == "cuda":
                for name, backend in _sdpa_backends().items():
                    if name == "math" and lq * lk > 1024 * 1024:
                        continue  # materialises the score matrix; far behind, slow to time
                    try:
                        with sdpa_kernel([backend]):
                            row[f"sdpa_{name}_ms"] = _time(run(F.scaled_dot_product_attention), device)
                    except RuntimeError:  # this backend does not take the case
                        row[f"sdpa_{name}_ms"] = None
        sdpa = [row[key] for key in row if key.startswith("sdpa_") and row[key]]
        row["fused_TFLOPs"] = flops / row["fused_ms"] / 1e9
        es = q.element_size()  # q, k, v read, o written (+ dO read, dq, dk, dv written, q k v o re-read)
        io = (2 * b * h * lq * d + 2 * b * h * lk * d) * es * (3 if backward else 1)
        _bound(row, io, flops, ceilings)
        if sdpa:
            row["best_sdpa_ms"] = min(sdpa)
            row["ratio_vs_best_sdpa"] = row["best_sdpa_ms"] / row["fused_ms"]  # > 1: fused is faster
        rows.append(row)
    return rows


def summarize(gn: list[dict[str, Any]], attn: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets: GN+SiLU ≥ 85 % of copy bandwidth on large shapes and ≥ 2× eager
    (geomean); attention ≥ best SDPA at head dims 40/80/160 and cross, ≥ 0.9× at 64/128."""
    out: dict[str, Any] = {}
    if gn:
        large = [r for r in gn if r["shape"][0] * r["shape"][1] * r["shape"][2] * r["shape"][3] >= 1 << 24]
        out["gn_speedup_vs_eager_geomean"] = _geomean([r["speedup_vs_eager"] for r in gn])
        out["gn_fraction_of_copy_bw_large_min"] = min((r["fraction_of_copy_bw"] for r in large), default=None)
        out["gn_targets_met"] = (out["gn_speedup_vs_eager_geomean"] >= 2.0
                                 and (out["gn_fraction_of_copy_bw_large_min"] or 0) >= 0.85)
    rated = [r for r in attn if r.get("ratio_vs_best_sdpa")]
    if rated:
        odd = [r["ratio_vs_best_sdpa"] for r in rated if r["shape"][4] in (40, 80, 160) or r["cross"]]
        even = [r["ratio_vs_best_sdpa"] for r in rated if r["shape"][4] in (64, 128) and not r["cross"]]
        out["attn_ratio_odd_dims_and_cross_geomean"] = _geomean(odd)
        out["attn_ratio_64_128_geomean"] = _geomean(even)
        out["attn_targets_met"] = (min(odd, default=0) >= 1.0 and min(even, default=0) >= 0.9)
    return out


def kernel_suite(device: torch.device, dtype: torch.dtype = torch.float16, ops: tuple[str, ...] = ("gn", "attn"),
                 quick: bool = False, backward: bool = False) -> dict[str, Any]:
    """Everything above in one run; ``quick`` uses a tiny shape set (interpreter plumbing tests)."""
    import platform

    gn_shapes = QUICK_GN if quick else unet_gn_shapes() + SD15_GN
    attn_shapes = QUICK_ATTN if quick else ATTN_SHAPES
    ceilings = device_ceilings(device, dtype, quick)
    gn = bench_group_norm(gn_shapes, dtype, device, groups=8 if quick else 32, ceilings=ceilings) if "gn" in ops else []
    attn = bench_attention(attn_shapes, dtype, device, backward, ceilings) if "attn" in ops else []
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "torch": torch.__version__, "triton": triton.__version__, "dtype": str(dtype),
            "ceilings": ceilings, "group_norm": gn, "attention": attn, "summary": summarize(gn, attn)}
