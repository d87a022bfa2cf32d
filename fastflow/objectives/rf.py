r"""Rectified flow (1-RF): regress the straight-path velocity.

.. math:: z \sim N(0, I),\ t \sim p(t),\ x_t = t\,x_1 + (1-t)\,z,\quad
          L = \mathbb E\, d\big(v_\theta(x_t, t), x_1 - z\big)

Reflow and Annealing Reflow (``reflow.py``) differ only in where ``z`` comes from
(:meth:`RectifiedFlow.source`); the OFTSR teacher (``oftsr.py``) also in its condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from fastflow.data.base import Batch
from fastflow.flow.guidance import Cond
from fastflow.flow.path import interpolate, velocity_target
from fastflow.flow.time import TimeSampler
from fastflow.objectives.base import drop_labels
from fastflow.objectives.distances import Distance, l2


@dataclass
class RectifiedFlow:
    preview_steps: ClassVar[int | None] = None  # a flow: previewed at train.sample_steps
    """1-RF on data batches. Labels are passed to class-conditional models (``num_classes``),
    dropped to the null label with probability ``cond_drop``."""

    time: TimeSampler = field(default_factory=TimeSampler)
    distance: Distance = l2
    num_classes: int = 0
    cond_drop: float = 0.0

    def source(self, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The noise end ``z`` coupled with ``batch.x``: independent fresh noise for 1-RF."""
        return torch.randn_like(batch.x), {}

    def condition(self, batch: Batch) -> Cond:
        """What the model is conditioned on: labels (class-conditional models), else nothing."""
        return drop_labels(batch.label, self.num_classes, self.cond_drop) if self.num_classes else None

    def __call__(self, model: nn.Module, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        x1 = batch.x
        z, logs = self.source(batch, step)
        t = self.time(x1.shape[0], x1.device)
        v = model(interpolate(z, x1, t), t, self.condition(batch))
        loss = self.distance(v, velocity_target(z, x1)).mean()
        return loss, {"loss": loss.detach(), **logs}
