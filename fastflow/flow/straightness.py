r"""Straightness of a flow (Liu et al., rectified flow):

.. math:: S = \mathbb E \int_0^1 \lVert (x_1 - x_0) - v(x_t, t) \rVert^2\,dt

estimated along Euler trajectories from ``x0``; the squared norm is averaged over dimensions,
so ``S`` does not grow with image size. A perfectly straight flow has ``S = 0``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastflow.flow.solvers import Velocity, grid_jumps, time_grid
from fastflow.flow.time import DEFAULT_EPS


@torch.no_grad()
def straightness(velocity: Velocity, x0: Tensor, steps: int = 100,
                 t0: float = DEFAULT_EPS) -> float:
    """Mean over the batch and over ``steps`` Euler intervals of ``mean((x1 − x0 − v)²)``."""
    grid = time_grid(steps, t0, 1.0)
    vs: list[Tensor] = []

    def recorded(x: Tensor, t: Tensor, t_end: Tensor) -> Tensor:
        vs.append(velocity(x, t))
        return vs[-1]

    x = grid_jumps(recorded, x0, grid)
    # Euler from t0 covers (1 − t0) of the path: the straight displacement is (x1 − x0)/(1 − t0).
    chord = (x - x0) / (1.0 - t0)
    sq = [((chord - v) ** 2).flatten(1).mean(1) for v in vs]
    weights = [grid[i + 1] - grid[i] for i in range(steps)]
    total = sum(w * s for w, s in zip(weights, sq, strict=True)) / (1.0 - t0)
    return float(total.mean())
