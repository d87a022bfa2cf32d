r"""Rectified flow (1-RF): regress the straight-path velocity.

.. math:: z \sim N(0, I),\ t \sim p(t),\ x_t = t\,x_1 + (1-t)\,z,\quad
          L = \mathbb E\, d\big(v_\theta(x_t, t), x_1 - z\big)

Reflow and Annealing Reflow (``reflow.py``) differ only in where ``z`` comes from
(:meth:`RectifiedFlow.source`); the OFTSR teacher (``oftsr.py``) also in its condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fastflow.data.base import Batch
from fastflow.flow.guidance import Cond
from fastflow.flow.path import interpolate, velocity_target
from fastflow.flow.time import TimeSampler, build_time_sampler
from fastflow.objectives.base import ObjectiveDefaults, drop_labels
from fastflow.objectives.distances import Distance, distance_option
from fastflow.objectives.options import option


def time_option(default: TimeSampler | None = None) -> Any:
    """The ``time`` option: a law's name or mapping in the config (``fastflow.flow.time``), the sampler here."""
    return option(factory=lambda: default or TimeSampler(), type=str | dict,
                  valid=lambda spec: build_time_sampler(spec) is not None, build=build_time_sampler)


def cond_drop_option() -> Any:
    """``cond_drop``: the probability that a label is replaced by the null label (CFG training)."""
    return option(0.0, valid=lambda p: 0.0 <= p < 1.0, means="in [0, 1)")


@dataclass
class RectifiedFlow(ObjectiveDefaults):
    """1-RF on data batches. Labels are passed to class-conditional models (``num_classes``),
    dropped to the null label with probability ``cond_drop``."""

    preview_steps: ClassVar[int | None] = None  # a flow: previewed at train.sample_steps
    time: TimeSampler = time_option()
    distance: Distance = distance_option()
    num_classes: int = 0  # from the model, not the config
    cond_drop: float = cond_drop_option()

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
