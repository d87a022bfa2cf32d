r"""Distillation of teacher pairs into a one-step (or k-step) generator.

The student's k-step sampler runs Euler from :math:`t_0 = \epsilon` on the grid
:math:`t_i = \epsilon + i(1-\epsilon)/k`. At a grid time the state on the teacher's straight
coupling is :math:`x_t = z + \frac{t-\epsilon}{1-\epsilon}(x_1 - z)`, and

.. math:: L = \mathbb E\, d\big(x_t + (1 - t)\,v_\theta(x_t, t),\ x_1\big).

For ``k = 1`` (one step) this is :math:`d(z + (1-\epsilon) v_\theta(z, \epsilon), x_1)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from fastflow.data.base import Batch
from fastflow.errors import DataError
from fastflow.flow.path import interpolate, predict_x1
from fastflow.flow.time import DEFAULT_EPS, TimeSampler
from fastflow.objectives.base import ObjectiveDefaults
from fastflow.objectives.distances import Distance, distance_option
from fastflow.objectives.options import option


def on_grid_state(z: Tensor, x1: Tensor, t: Tensor, eps: float) -> Tensor:
    """The state at time ``t`` of the straight path that starts at ``z`` at time ``eps``."""
    return interpolate(z, x1, (t - eps) / (1 - eps))


@dataclass
class Distill(ObjectiveDefaults):
    distance: Distance = distance_option()
    k: int = option(1, valid=lambda k: k >= 1, means=">= 1")
    eps: float = option(DEFAULT_EPS, valid=lambda e: 0.0 <= e < 1.0, means="in [0, 1)")
    num_classes: int = 0  # from the model, not the config

    @property
    def preview_steps(self) -> int:  # type: ignore[override]
        """A k-step student is previewed at its k steps."""
        return self.k

    def pairs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        if batch.z is None:
            raise DataError("distillation needs teacher pairs: set data.name=pairs")
        return batch.z, batch.x

    def prediction(self, model: nn.Module, z: Tensor, x1: Tensor, cond: Tensor | None) -> Tensor:
        t = TimeSampler("k_step", eps=self.eps, k=self.k)(len(z), z.device)
        xt = on_grid_state(z, x1, t, self.eps)
        return predict_x1(xt, t, model(xt, t, cond))

    def __call__(self, model: nn.Module, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        z, x1 = self.pairs(batch)
        cond = batch.label if self.num_classes else None
        loss = self.distance(self.prediction(model, z, x1, cond), x1).mean()
        return loss, {"loss": loss.detach()}


