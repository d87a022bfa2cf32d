"""``fastflow bench train``: the time and peak memory of one training step (rectified-flow loss,
forward, backward, gradient clipping, Adam) per preset and path, and with ``--teacher`` the rate of
pair generation of a teacher checkpoint per solver and path.

Training paths (:data:`PATHS`) are the loop's own settings (:mod:`fastflow.train.accel`): ``eager``;
``bf16`` (``train.amp=bf16``); ``compiled`` (``train.compile=model``); ``compiled+bf16``; ``fused``
(the Triton GroupNorm/attention, ``model.fused=triton``) and ``fused+compiled``. Every path starts
from the same weights, batch and noise; the losses and gradient norms of its first
:data:`LOSS_STEPS` steps are recorded with their largest relative difference to eager's, so that a
row that computes something else shows. The fused paths need a kernel device (CUDA with Triton; the
Triton interpreter counts, for tests), bf16 a device that executes it natively: elsewhere they are
left out with the reason. Peak memory is the CUDA allocator's high-water mark over the timed steps
(no CPU equivalent).

Pair paths (:data:`PAIR_PATHS`): ``eager``, ``fused`` (the inference kernels ``fused=auto`` takes
here: the CPU block kernel on a CPU) and ``compiled`` (``torch.compile`` of the teacher); pairs/s
from one batch of noise per solver, with the largest ``|Δ|`` of the pairs against eager's.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fastflow.data.base import ArrayDataset
from fastflow.errors import ConfigError
from fastflow.fused import apply as apply_fused
from fastflow.fused.frozen import apply_frozen
from fastflow.models.presets import build_model, sample_shape
from fastflow.objectives import build_objective
from fastflow.pairs import FlowTeacher
from fastflow.train.accel import autocast_for, compiled, resolve_amp
from fastflow.train.step import MicroBatches, train_step
from fastflow.utils.distributed import DistInfo
from fastflow.utils.timing import measure_latency

PATHS = ("eager", "bf16", "compiled", "compiled+bf16", "fused", "fused+compiled")
PRESETS = ("slim-15.7m", "rf-ddpmpp")
PAIR_PATHS = ("eager", "fused", "compiled")
#: steps whose loss and gradient norm every path records (the first loss is the same for all: the
#: output layer starts at 0, so the gradient norm is what tells a path that computes something else)
LOSS_STEPS = 3


def _step_fn(model: nn.Module, path: str, data: ArrayDataset, batch: int,
             seed: int) -> Callable[[], tuple[float, float]]:
    """One training step (:func:`~fastflow.train.step.train_step`, the loop's own) on ``path``'s
    settings as a closure returning its loss and gradient norm; every call is step 0 (same batch,
    times and noise)."""
    device = next(model.parameters()).device
    objective = build_objective({"name": "rf"}, num_classes=0, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    micro = MicroBatches.build(data, batch, 1, seed, DistInfo())
    if path.startswith("fused"):
        apply_fused(model, "triton", inference=False)
    net, call = compiled("model" if "compiled" in path else "off", model, objective)
    amp = autocast_for("bf16" if "bf16" in path else "none", device)

    def step() -> tuple[float, float]:
        logs = train_step(net, model, call, micro, 0, device, amp, opt, 1.0)
        return float(logs["loss"]), float(logs["grad_norm"])

    return step


def check_paths(paths: Sequence[str], known: Sequence[str] = PATHS) -> None:
    unknown = [p for p in paths if p not in known]
    if unknown:
        raise ConfigError(f"unknown path {unknown[0]!r}; choose from {', '.join(known)}")


def runnable_amp(paths: Sequence[str], device: torch.device) -> tuple[list[str], str | None]:
    """The ``paths`` whose precision runs natively on ``device``, and why the others do not."""
    try:
        resolve_amp("bf16", device)
    except ConfigError as e:
        kept = [p for p in paths if "bf16" not in p]
        return kept, str(e) if len(kept) < len(paths) else None
    return list(paths), None


def train_step_suite(presets: Sequence[str], batch: int, device: torch.device, paths: Sequence[str] = PATHS,
                     steps: int = 10, warmup: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (preset, path) that runs here: step time percentiles, samples/s, peak CUDA memory,
    the first steps' losses and gradient norms with their largest relative difference to eager's,
    parameters."""
    rows = []
    for preset in presets:
        torch.manual_seed(seed)
        base = build_model({"preset": preset}).to(device)
        x = torch.rand(batch, *sample_shape(base), generator=torch.Generator().manual_seed(seed)) * 2 - 1
        data = ArrayDataset(x.to(device))
        reference: list[tuple[float, float]] | None = None
        for path in paths:
            step = _step_fn(copy.deepcopy(base).train(), path, data, batch, seed)
            t0 = time.process_time()
            first = [step() for _ in range(LOSS_STEPS)]
            first_s = time.process_time() - t0
            reference = first if path == "eager" else reference
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            lat = measure_latency(step, device, warmup=warmup, iters=steps)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            diff = None if reference is None else max(
                abs(a - b) / abs(b) for got, want in zip(first, reference, strict=True)
                for a, b in zip(got, want, strict=True))
            rows.append({"preset": preset, "path": path, "batch": batch, "losses": [f[0] for f in first],
                         "grad_norms": [f[1] for f in first], "first_loss": first[0][0],
                         "rel_diff": diff, "first_steps_cpu_s": first_s,
                         "samples_per_s": batch / (lat.p50_ms / 1e3),
                         "params": sum(p.numel() for p in base.parameters()), "peak_mem_mb": peak,
                         **{f"step_{k}": v for k, v in lat.to_dict().items()}})
            del step
    return rows


def _teacher_for(model: nn.Module, path: str) -> nn.Module:
    if path == "fused":
        apply_frozen(model, "auto", "cpu")  # what the demo's pair stage does
    return torch.compile(model) if path == "compiled" else model


def pairs_suite(teacher: str, n: int, solvers: Sequence[str], paths: Sequence[str] = PAIR_PATHS,
                euler_steps: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    """Pairs/s of the teacher checkpoint ``teacher`` on ``n`` noises per solver (RK45 at the demo's
    rtol = atol = 1e-3, Euler at ``euler_steps``) and path, on the CPU; the first call of a path
    (compilation) is not timed."""
    rows = []
    for solver in solvers:
        reference = None
        for path in paths:
            flow = FlowTeacher.from_checkpoint(teacher, solver=solver, rtol=1e-3, atol=1e-3,
                                               steps=None if solver == "rk45" else euler_steps)
            flow.model = _teacher_for(flow.model, path)
            z = torch.randn(n, *sample_shape(flow.model), generator=torch.Generator().manual_seed(seed))
            flow(z[:8])  # compiles, builds the kernel
            t0 = time.process_time()
            x, nfe = flow(z)
            seconds = time.process_time() - t0
            reference = x if reference is None else reference
            rows.append({"solver": solver, "path": path, "n": n, "pairs_per_cpu_s": n / seconds,
                         "mean_nfe": float(nfe.float().mean()), "max_abs_diff": float((x - reference).abs().max())})
    return rows
