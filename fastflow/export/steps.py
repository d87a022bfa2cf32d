"""The steps both exporters share (one generator, :mod:`~fastflow.export.api`; a text pipeline,
:mod:`~fastflow.export.pipeline`): which kernels go into the artefact, the versions a report records,
and the latency line."""

from __future__ import annotations

import copy
import importlib.metadata
import platform
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.export.formats import FORMATS
from fastflow.export.options import ExportOptions
from fastflow.fused import apply, decide
from fastflow.fused.cpu_block_q8 import quantize_cpu_blocks
from fastflow.utils.timing import measure_latency

Say = Callable[[str], None]


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("fastflow", "onnx", "onnxruntime", "onnxscript", "torch-tensorrt", "tensorrt"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def kernel_model(model: nn.Module, o: ExportOptions, say: Say) -> tuple[nn.Module, str]:
    """The model to export with the kernels ``o.fused`` asks for, and what the artefact runs for them
    (``GeneratorSpec.fused``): ``triton`` (compiled into a CUDA package), ``op`` (calls the registered
    ops: an ``ep``, or the interpreter), ``cpu`` (the CPU block kernel) or ``off``."""
    params = sum(p.numel() for p in model.parameters())
    path, _ = decide(o.fused, o.device, params)
    fmt = FORMATS[o.format]
    # int8 takes the CPU kernel where fp32 would (auto: the winners table; measured faster and closer to fp32
    # than PT2E int8 for the small student, slower for slim-15.7m, like fp32: docs/cpu.md)
    cpu_ok = o.format == "pt2" and o.dtype == "fp32" and not (o.prepack or o.pipeline)
    if path == "off" or (path == "cpu" and not cpu_ok and o.fused == "auto"):
        return model, "off"
    if not fmt.kernels or (path == "triton" and o.quantize):
        say(f"note: --format {o.format}{' --quantize' if o.quantize else ''} keeps the PyTorch reference "
            "decomposition of the fused ops")
        return model, "off"
    fused = copy.deepcopy(model)
    done = apply(fused, o.fused, o.device, params=params).path  # auto may still fall back to off
    if done == "off":
        return model, "off"
    if done == "cpu":
        if o.quantize:
            say(f"int8 CPU block kernel: {len(quantize_cpu_blocks(fused).swapped)} blocks quantised"
                + (" (--calibrate unused: each call quantises over its own range)" if o.calibrate else ""))
        return fused, "cpu"
    return fused, "triton" if o.device.type == "cuda" and o.format == "pt2" else "op"


def latency(runner: Callable[..., Tensor], example: tuple[Tensor, ...], device: torch.device, iters: int,
            say: Say, what: str = "") -> dict[str, Any]:
    """``iters`` timed calls of ``runner`` on ``example`` after up to 3 warm-up calls."""
    lat = measure_latency(lambda: runner(*example), device, warmup=min(3, iters), iters=iters)
    say(f"latency{' ' + what if what else ''} at batch {len(example[0])}: p50 {lat.p50_ms:.2f} ms, "
        f"p90 {lat.p90_ms:.2f} ms, p99 {lat.p99_ms:.2f} ms")
    return {"batch": len(example[0]), **lat.to_dict()}
