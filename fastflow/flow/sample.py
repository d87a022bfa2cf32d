"""Noise → model → solver: the one sampling entry point used by training grids, the CLI and metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fastflow.flow.guidance import Cond, cfg_velocity
from fastflow.flow.solvers import SolveResult, solve


@torch.no_grad()
def generate(model: Callable[..., Tensor], z: Tensor, solver: str = "euler", steps: int | None = None,
             cond: Cond = None, cfg_scale: float = 1.0, **solver_kwargs: Any) -> SolveResult:
    """Integrate ``model``'s velocity (guided with ``cfg_scale`` when ``cond`` is given) from ``z``."""
    return solve(solver, cfg_velocity(model, cond, cfg_scale), z, steps, **solver_kwargs)
