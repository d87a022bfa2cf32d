r"""The exported object: a generator ``(z[, cond]) → image``, not just the velocity net.

``Generator(model, steps=k)`` runs ``k`` Euler steps on the grid ``t_i = ε + i(1-ε)/k`` with the
:math:`x \leftarrow x + h\,v(x, t)` arithmetic inside, so one forward pass is the whole
sampler (``k = 1``: :math:`x_1 = z + (1-\epsilon)v(z, \epsilon)`). It matches
:func:`fastflow.flow.solvers.euler` exactly and traces cleanly under ``torch.export``.
``SRGenerator`` is OFTSR's one-step super-resolution with the knob ``τ`` as an input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastflow.flow.solvers import time_grid
from fastflow.flow.time import DEFAULT_EPS
from fastflow.flow.sr import sr_one_step


class Generator(nn.Module):
    input_names = ("z", "cond")

    def __init__(self, model: nn.Module, steps: int = 1, t0: float = DEFAULT_EPS) -> None:
        super().__init__()
        self.model, self.steps = model, steps
        self.grid = time_grid(steps, t0, 1.0)

    @property
    def config(self):  # noqa: ANN201 - the wrapped model's config
        return self.model.config

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        x = z
        for i in range(self.steps):
            t = torch.full((z.shape[0],), self.grid[i], dtype=torch.float32, device=z.device)
            x = x + (self.grid[i + 1] - self.grid[i]) * self.model(x, t, cond)
        return x


class SRGenerator(nn.Module):
    r"""OFTSR's one-step super-resolution with the knob as an input:
    ``(lq, noise, τ) → x0 + u_θ(x0, τ | lq)`` with :math:`x_0 = \sqrt{1-\sigma_p^2}\,lq + \sigma_p\,noise`."""

    input_names = ("lq", "noise", "tau")

    def __init__(self, model: nn.Module, sigma_p: float) -> None:
        super().__init__()
        self.model, self.sigma_p = model, sigma_p

    @property
    def config(self):  # noqa: ANN201 - the wrapped model's config
        return self.model.config

    def forward(self, lq: Tensor, noise: Tensor, tau: Tensor) -> Tensor:
        return sr_one_step(self.model, lq, tau, self.sigma_p, noise)
