r"""Annealing schedules of SlimFlow's Annealing Reflow: the weight :math:`\beta_i` of fresh noise
blended into the stored teacher noise at training step :math:`i`,
:math:`z' = \sqrt{1-\beta^2}\,z + \beta\,\epsilon`.

=============  ==========================================
``fixed_b``    :math:`\beta = b` (``fixed_0`` is plain reflow)
``linear_K``   :math:`\beta = 1 - \min(1, i/K)`
``exp_K``      :math:`\beta = \exp(-i/K)`
``cos_K``      :math:`\beta = (1 + \cos(\pi \min(1, i/K)))/2`
=============  ==========================================

Every schedule except ``fixed`` starts at :math:`\beta = 1` (1-RF on fresh noise, which a small
student learns from scratch) and anneals towards the teacher's coupling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastflow.errors import ConfigError

KINDS = ("fixed", "linear", "exp", "cos")


@dataclass(frozen=True)
class BetaSchedule:
    kind: str = "fixed"
    value: float = 0.0  # b for fixed, K for the others

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown annealing schedule {self.kind!r}; choose from {KINDS}")
        if self.kind == "fixed" and not 0.0 <= self.value <= 1.0:
            raise ConfigError(f"fixed beta must be in [0, 1], got {self.value}")
        if self.kind != "fixed" and self.value <= 0:
            raise ConfigError(f"annealing length K must be > 0, got {self.value}")

    def __call__(self, step: int) -> float:
        if self.kind == "fixed":
            return self.value
        r = min(1.0, step / self.value)
        if self.kind == "linear":
            return 1.0 - r
        if self.kind == "exp":
            return math.exp(-step / self.value)
        return (1.0 + math.cos(math.pi * r)) / 2.0


def parse_schedule(spec: str | float | int) -> BetaSchedule:
    """``"linear_300000"``, ``"cos_2000"``, ``"exp_500"``, ``"fixed_0.5"`` (or a bare number = fixed)."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return BetaSchedule("fixed", float(spec))
    if not isinstance(spec, str) or "_" not in spec:
        raise ConfigError(f"annealing schedule must look like linear_K, exp_K, cos_K or fixed_b, got {spec!r}")
    kind, _, value = spec.partition("_")
    try:
        return BetaSchedule(kind, float(value))
    except ValueError:
        raise ConfigError(f"annealing schedule {spec!r}: {value!r} is not a number") from None
