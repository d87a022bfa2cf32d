r"""Reflow (k-RF) and SlimFlow's Annealing Reflow on stored teacher pairs ``(z, x1 = T(z))``:

.. math:: z' = \sqrt{1-\beta_i^2}\,z + \beta_i\,\epsilon,\qquad
          L = \mathbb E\, d\big(v_\theta(t x_1 + (1-t) z', t),\ x_1 - z'\big)

with :math:`\beta_i` from an annealing schedule (``annealing.py``); :math:`\beta \equiv 0` is
plain reflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fastflow.data.base import Batch
from fastflow.errors import DataError
from fastflow.objectives.annealing import BetaSchedule, parse_schedule
from fastflow.objectives.options import option
from fastflow.objectives.rf import RectifiedFlow


@dataclass
class Reflow(RectifiedFlow):
    beta: BetaSchedule = option(factory=BetaSchedule, key="anneal", type=str | float,
                                valid=lambda spec: parse_schedule(spec) is not None, build=parse_schedule)

    def source(self, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if batch.z is None:
            raise DataError("reflow needs teacher pairs: set data.name=pairs (see `fastflow pairs`)")
        b = self.beta(step)
        z = batch.z
        if b > 0:
            z = math.sqrt(1.0 - b * b) * z + b * torch.randn_like(z)
        return z, {"beta": torch.tensor(b)}
