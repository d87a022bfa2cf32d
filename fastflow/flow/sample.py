"""Noise → model → solver: the one sampling entry point used by training grids, the CLI and metrics.

A two-time model (``config.times == 2``, MeanFlow) is sampled by ``one_step`` and ``euler`` through
its average velocity (:func:`~fastflow.flow.solvers.mean_flow`: ``x1 = z + u(z, 0, 1)`` in one step);
the other solvers integrate its instantaneous velocity ``u(x, t, t) = v(x, t)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fastflow.errors import ConfigError
from fastflow.flow.guidance import Cond, cfg_velocity
from fastflow.flow.solvers import SolveResult, mean_flow, solve


def is_two_time(model: object) -> bool:
    """Whether ``model`` predicts average velocities ``u(x, t, t_end)`` (``config.times == 2``)."""
    return getattr(getattr(model, "config", None), "times", 1) == 2


def check_mean_flow_cfg(model: Callable[..., Tensor], cfg_scale: float) -> None:
    """A MeanFlow (two-time) model stepped on its average velocity has its guidance trained in: a CFG
    scale other than 1 is a :class:`~fastflow.errors.ConfigError` (sampling and export say it alike)."""
    if is_two_time(model) and cfg_scale != 1.0:
        raise ConfigError("a MeanFlow model has its guidance trained in (objective.cfg_scale): use CFG scale 1 "
                          "(to sample guided: a multi-stage solver, heun or rk45, on its instantaneous velocity)")


@torch.no_grad()
def generate(model: Callable[..., Tensor], z: Tensor, solver: str = "euler", steps: int | None = None,
             cond: Cond = None, cfg_scale: float = 1.0, **solver_kwargs: Any) -> SolveResult:
    """Integrate ``model``'s velocity (guided with ``cfg_scale`` when ``cond`` is given) from ``z``."""
    if is_two_time(model) and solver in ("one_step", "euler"):
        check_mean_flow_cfg(model, cfg_scale)
        if solver == "euler" and steps is None:
            raise ConfigError("solver 'euler' needs steps")
        return mean_flow(lambda x, t, t_end: model(x, t, cond, t_end=t_end), z, 1 if solver == "one_step" else steps,
                         **solver_kwargs)
    return solve(solver, cfg_velocity(model, cond, cfg_scale), z, steps, **solver_kwargs)
