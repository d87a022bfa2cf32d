"""CPU threads vs a busy neighbour: the time of one demo training step (``configs/digits.yaml``:
the 0.74M-parameter teacher, batch 128; forward, backward, clipping, Adam) at each thread count,
on an idle machine and next to a process that keeps one core busy.

This is the measurement behind the default of ``fastflow.utils.threads`` (``fastflow bench threads``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from fastflow.data import build_dataset
from fastflow.fused import split_spec
from fastflow.models import build_model
from fastflow.objectives import build_objective
from fastflow.train import load_config
from fastflow.train.step import MicroBatches, train_step
from fastflow.utils.distributed import DistInfo
from fastflow.utils.timing import measure_latency

BUSY_LOOP = "while True: pass"


def _demo_step() -> Callable[[], object]:
    """One training step of the demo's teacher (:func:`~fastflow.train.step.train_step`, the loop's
    own), as a closure: step 0 every time (fixed batch and noise)."""
    cfg = load_config("digits")
    torch.manual_seed(0)
    data = build_dataset(cfg.data)
    model = build_model(split_spec(cfg.model)[0]).train()
    cpu = torch.device("cpu")
    objective = build_objective(cfg.objective, num_classes=0, device=cpu)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    micro = MicroBatches.build(data, cfg.train.batch_size, 1, cfg.seed, DistInfo())
    return lambda: train_step(model, model, objective, micro, 0, cpu, nullcontext(), opt, cfg.optim.grad_clip)


def thread_sweep(threads: Sequence[int], steps: int = 20, warmup: int = 3) -> list[dict[str, Any]]:
    """Median/p90 step time per (threads, neighbour) with the neighbour idle or one busy loop."""
    step = _demo_step()
    before = torch.get_num_threads()
    rows = []
    try:
        for neighbour in ("idle", "one busy core"):
            busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if neighbour != "idle" else None
            try:
                for n in threads:
                    torch.set_num_threads(n)
                    lat = measure_latency(step, warmup=warmup, iters=steps)
                    rows.append({"threads": n, "neighbour": neighbour, "step_ms_p50": lat.p50_ms,
                                 "step_ms_p90": lat.p90_ms, "steps": lat.calls})
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    finally:
        torch.set_num_threads(before)
    idle = {r["threads"]: r["step_ms_p50"] for r in rows if r["neighbour"] == "idle"}
    for r in rows:
        r["slowdown_vs_idle"] = r["step_ms_p50"] / idle[r["threads"]]
    return rows
