"""``fastflow bench train``: the time and peak memory of one training step (rectified-flow loss,
forward, backward, gradient clipping, Adam) per preset and path — ``eager``, ``fused`` (the Triton
GroupNorm/attention swapped in by :func:`fastflow.fused.apply`), ``compiled`` (``torch.compile``
of the model) and ``fused+compiled``.

Every path starts from the same weights, batch and noise; its first step's loss is recorded
beside the timings so that a row that computes something else shows. The fused paths need a
kernel device (CUDA with Triton; the Triton interpreter counts, for tests): elsewhere they are
left out with the reason. Peak memory is the CUDA allocator's high-water mark over the timed
steps (no CPU equivalent is recorded).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from fastflow.data.base import ArrayDataset
from fastflow.errors import ConfigError
from fastflow.fused import apply as apply_fused
from fastflow.models.presets import build_model, sample_shape
from fastflow.objectives import build_objective
from fastflow.train.step import MicroBatches, train_step
from fastflow.utils.distributed import DistInfo
from fastflow.utils.timing import measure_latency

PATHS = ("eager", "fused", "compiled", "fused+compiled")
PRESETS = ("slim-15.7m", "rf-ddpmpp")


def _step_fn(model: nn.Module, data: ArrayDataset, batch: int, seed: int) -> Callable[[], float]:
    """One training step (:func:`~fastflow.train.step.train_step`, the loop's own) as a closure
    returning its loss; every call is step 0, so every path draws the same batch, times and noise."""
    device = next(model.parameters()).device
    objective = build_objective({"name": "rf"}, num_classes=0, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    micro = MicroBatches.build(data, batch, 1, seed, DistInfo())
    return lambda: float(train_step(model, model, objective, micro, 0, device, nullcontext(), opt, 1.0)["loss"])


def _path_model(base: nn.Module, path: str) -> nn.Module:
    model = copy.deepcopy(base).train()
    if path.startswith("fused"):
        apply_fused(model, "on")
    return torch.compile(model) if path.endswith("compiled") else model


def check_paths(paths: Sequence[str]) -> None:
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ConfigError(f"unknown path {unknown[0]!r}; choose from {', '.join(PATHS)}")


def train_step_suite(presets: Sequence[str], batch: int, device: torch.device, paths: Sequence[str] = PATHS,
                     steps: int = 10, warmup: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (preset, path) that runs here: step time percentiles, peak CUDA memory, the
    first step's loss, parameters."""
    rows = []
    for preset in presets:
        torch.manual_seed(seed)
        base = build_model({"preset": preset}).to(device)
        x = torch.rand(batch, *sample_shape(base), generator=torch.Generator().manual_seed(seed)) * 2 - 1
        data = ArrayDataset(x.to(device))
        for path in paths:
            step = _step_fn(_path_model(base, path), data, batch, seed)
            first = step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            lat = measure_latency(step, device, warmup=warmup, iters=steps)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            rows.append({"preset": preset, "path": path, "batch": batch, "first_loss": first,
                         "params": sum(p.numel() for p in base.parameters()), "peak_mem_mb": peak,
                         **{f"step_{k}": v for k, v in lat.to_dict().items()}})
            del step
    return rows
