r"""OFTSR's inference in the flow layer: where its flow starts and the student's one-step map.

The flow runs from the noised degraded image to the high-resolution image,

.. math:: x_0 = \sqrt{1-\sigma_p^2}\,\mathrm{lq} + \sigma_p\,\epsilon,\qquad x_1 = \mathrm{HR},

and a student :math:`u_\theta(x_0, \tau \mid \mathrm{lq})` (the average velocity of the teacher's
trajectory from :math:`x_0` to time :math:`\tau`) maps it in one step:
:math:`\hat x(\tau) = x_0 + u_\theta(x_0, \tau \mid \mathrm{lq})`. The training losses live in
:mod:`fastflow.objectives.oftsr`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

#: σ_p for noiseless degradations (the paper's default); 0.5 noisy, 0.2 natural images
DEFAULT_SIGMA_P = 0.1


def sr_start(lq: Tensor, sigma_p: float, noise: Tensor | None = None) -> Tensor:
    """The flow's start ``x0 = sqrt(1 − σ_p²)·lq + σ_p·ε``."""
    eps = torch.randn_like(lq) if noise is None else noise
    return math.sqrt(1.0 - sigma_p**2) * lq + sigma_p * eps


def sr_one_step(model: Callable[..., Tensor], lq: Tensor, tau: float | Tensor, sigma_p: float,
                noise: Tensor | None = None) -> Tensor:
    """The student's one-step output at knob ``τ`` (a float or a ``[B]`` tensor):
    ``x̂(τ) = x0 + u_θ(x0, τ | lq)``."""
    return sr_map(model, sr_start(lq, sigma_p, noise), lq, tau)


def sr_map(model: Callable[..., Tensor], x0: Tensor, lq: Tensor, tau: float | Tensor) -> Tensor:
    """The one-step map from a given start ``x0``: ``x0 + u_θ(x0, τ | lq)``."""
    t = tau if isinstance(tau, Tensor) else torch.full((lq.shape[0],), float(tau), device=lq.device)
    return x0 + model(x0, t, {"image": lq})
