r"""The rectified-flow path, in the project's one convention.

.. math::
    x_t = t\,x_1 + (1 - t)\,x_0,\qquad \dot x_t = x_1 - x_0,\qquad
    \hat x_1 = x_t + (1 - t)\,v(x_t, t)

with :math:`t = 0` noise and :math:`t = 1` data.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expand_t(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample time ``[B]`` to broadcast against ``like`` (``[B, ...]``)."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """``x_t = t·x1 + (1 − t)·x0`` for per-sample times ``t`` of shape ``[B]``."""
    tt = expand_t(t, x0)
    return tt * x1 + (1 - tt) * x0


def velocity_target(x0: Tensor, x1: Tensor) -> Tensor:
    """The straight-path velocity ``x1 − x0``."""
    return x1 - x0


def predict_x1(x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """One-step extrapolation to data: ``x̂1 = x_t + (1 − t)·v``."""
    return x_t + (1 - expand_t(t, x_t)) * v


def time_tensor(t: float | Tensor, batch: int, like: Tensor) -> Tensor:
    """A ``[B]`` time tensor on ``like``'s device, in float32 (models scale it themselves)."""
    if isinstance(t, Tensor):
        return t.to(device=like.device, dtype=torch.float32).expand(batch)
    return torch.full((batch,), float(t), device=like.device, dtype=torch.float32)
