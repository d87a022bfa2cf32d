"""Noise → model → solver: the one sampling entry point used by training grids, the CLI and metrics.

A two-time model (``config.times == 2``, MeanFlow) is sampled by ``one_step`` and ``euler`` through
its average velocity (:func:`~fastflow.flow.solvers.mean_flow`: ``x1 = z + u(z, 0, 1)`` in one step);
the other solvers integrate its instantaneous velocity ``u(x, t, t) = v(x, t)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fastflow.flow.guidance import Cond, cfg_velocity
from fastflow.errors import ConfigError
from fastflow.flow.solvers import SolveResult, mean_flow, solve


def is_two_time(model: object) -> bool:
    """Whether ``model`` predicts average velocities ``u(x, t, t_end)`` (``config.times == 2``)."""
    return getattr(getattr(model, "config", None), "times", 1) == 2


@torch.no_grad()
def generate(model: Callable[..., Tensor], z: Tensor, solver: str = "euler", steps: int | None = None,
             cond: Cond = None, cfg_scale: float = 1.0, **solver_kwargs: Any) -> SolveResult:
    """Integrate ``model``'s velocity (guided with ``cfg_scale`` when ``cond`` is given) from ``z``."""
    if is_two_time(model) and solver in ("one_step", "euler"):
        if cfg_scale != 1.0:
            raise ConfigError("a MeanFlow model has its guidance trained in (objective.cfg_scale); sample it with "
                              "cfg 1, or with a multi-stage solver (heun, rk45) on its instantaneous velocity")
        if solver == "euler" and steps is None:
            raise ConfigError("solver 'euler' needs steps")
        return mean_flow(lambda x, t, t_end: model(x, t, cond, t_end=t_end), z, 1 if solver == "one_step" else steps,
                         **solver_kwargs)
    return solve(solver, cfg_velocity(model, cond, cfg_scale), z, steps, **solver_kwargs)
