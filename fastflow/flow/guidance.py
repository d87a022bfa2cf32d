r"""Classifier-free guidance in velocity space.

.. math:: v^\alpha(x, t \mid c) = \alpha\,v(x, t \mid c) + (1 - \alpha)\,v(x, t \mid \varnothing)

``α = 1`` is the plain conditional velocity, ``α = 0`` the unconditional one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Cond = Tensor | dict[str, Tensor] | None


def _cat(a: Cond, b: Cond) -> Cond:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.cat([a, b])
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    raise TypeError("conditional and null conditions must have the same structure")


def cfg_velocity(model: nn.Module | Callable[..., Tensor], cond: Cond, scale: float,
                 null_cond: Cond | Any = ...) -> Callable[[Tensor, Tensor], Tensor]:
    """Return ``velocity(x, t)`` for ``model(x, t, cond)`` guided with scale ``α``.

    The null condition defaults to ``model.null_cond(cond)`` when the model defines it; then
    both branches run as one call on a doubled batch (one NFE). Otherwise the model is called
    with ``cond=None`` for the unconditional branch.
    """
    if cond is None or scale == 1.0:
        return lambda x, t: model(x, t, cond)
    if null_cond is ...:
        null_fn = getattr(model, "null_cond", None)
        null_cond = null_fn(cond) if callable(null_fn) else None

    if null_cond is None:
        def guided(x: Tensor, t: Tensor) -> Tensor:
            vc, vu = model(x, t, cond), model(x, t, None)
            return scale * vc + (1 - scale) * vu
        return guided

    both = _cat(cond, null_cond)

    def guided_batched(x: Tensor, t: Tensor) -> Tensor:
        vc, vu = model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return scale * vc + (1 - scale) * vu
    return guided_batched
