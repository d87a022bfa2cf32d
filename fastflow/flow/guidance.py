r"""Classifier-free guidance in velocity space.

.. math:: v^\alpha(x, t \mid c) = \alpha\,v(x, t \mid c) + (1 - \alpha)\,v(x, t \mid \varnothing)

``α = 1`` is the plain conditional velocity, ``α = 0`` the unconditional one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fastflow.errors import ShapeError

Cond = Tensor | dict[str, Tensor] | None


def _cat(a: Cond, b: Cond) -> Cond:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.cat([a, b])
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    raise ShapeError("conditional and null conditions must have the same structure (tensors, or dicts of tensors)")


def index_cond(cond: Cond, idx: Tensor) -> Cond:
    """The rows ``idx`` of a condition (tensor or dict of tensors)."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: v[idx] for k, v in cond.items()}
    return cond[idx]


class GuidedVelocity:
    """``velocity(x, t)`` of ``model(x, t, cond)``, guided with scale ``α`` when ``cond`` is set.

    With a null condition both branches run as one call on a doubled batch (one NFE); with
    ``null_cond=None`` the unconditional branch calls the model with ``cond=None``.
    ``select(idx)`` restricts it to a subset of the batch (used by adaptive solvers).
    """

    def __init__(self, model: Callable[..., Tensor], cond: Cond, scale: float, null_cond: Cond) -> None:
        self.model, self.cond, self.scale, self.null_cond = model, cond, scale, null_cond
        self._both = None if cond is None or null_cond is None else _cat(cond, null_cond)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.cond is None or self.scale == 1.0:
            return self.model(x, t, self.cond)
        if self._both is None:
            vc, vu = self.model(x, t, self.cond), self.model(x, t, None)
        else:
            both = self.model(torch.cat([x, x]), torch.cat([t, t]), self._both)
            n = x.shape[0]  # a symbolic size under export (len() would specialise it)
            vc, vu = both[:n], both[n:]  # slices, not chunk(2): ONNX export of a dynamic batch
        return self.scale * vc + (1 - self.scale) * vu

    def select(self, idx: Tensor) -> GuidedVelocity:
        return GuidedVelocity(self.model, index_cond(self.cond, idx), self.scale,
                              index_cond(self.null_cond, idx))


def cfg_velocity(model: Callable[..., Tensor], cond: Cond, scale: float = 1.0,
                 null_cond: Cond | Any = ...) -> GuidedVelocity:
    """Guided velocity of ``model``; the null condition defaults to ``model.null_cond(cond)``
    when the model defines it, else the model is called with ``cond=None``."""
    if null_cond is ... :
        null_fn = getattr(model, "null_cond", None)
        null_cond = null_fn(cond) if callable(null_fn) and cond is not None and scale != 1.0 else None
    return GuidedVelocity(model, cond, scale, null_cond)
