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
from typing import Any

import torch
from torch import nn

from fastflow.data.base import Batch
from fastflow.errors import ConfigError
from fastflow.fused import apply as apply_fused
from fastflow.models.presets import build_model, sample_shape
from fastflow.objectives import build_objective
from fastflow.utils.timing import measure_latency

PATHS = ("eager", "fused", "compiled", "fused+compiled")
PRESETS = ("slim-15.7m", "rf-ddpmpp")


def _step_fn(model: nn.Module, batch: Batch, seed: int) -> Callable[[], float]:
    """One training step as a closure returning its loss; the RNG is reseeded per step so every
    path draws the same times and noise."""
    objective = build_objective({"name": "rf"}, num_classes=0, device=batch.x.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> float:
        torch.manual_seed(seed)
        loss, _ = objective(model, batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    return step


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
        data = Batch(x.to(device))
        for path in paths:
            step = _step_fn(_path_model(base, path), data, seed)
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
