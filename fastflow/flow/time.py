r"""Training-time samplers :math:`t \sim p(t)` on ``[eps, 1]``.

* ``uniform``: :math:`t \sim U(\epsilon, 1)` (the papers' default, ``eps = 1e-3``).
* ``logit_normal``: :math:`t = \epsilon + (1-\epsilon)\,\sigma(m + s\,n)`, :math:`n \sim N(0,1)`.
* ``u_shaped``: density :math:`\propto \cosh(a(2u-1))` on ``[0, 1]`` (2-RF++ "U-shaped"),
  weighting both ends, mapped to ``[eps, 1]``.
* ``fixed``: a constant ``t``.
* ``k_step``: the k-step grid :math:`t = \mathrm{randint}(0, k)\,(1-\epsilon)/k + \epsilon`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastflow.errors import ConfigError
from fastflow.utils.schema import build

DEFAULT_EPS = 1e-3


@dataclass(frozen=True)
class TimeSampler:
    """Draws ``[B]`` float32 times. ``kind`` selects the law; see the module docstring."""

    kind: str = "uniform"
    eps: float = DEFAULT_EPS
    loc: float = 0.0  # logit_normal mean
    scale: float = 1.0  # logit_normal std
    a: float = 4.0  # u_shaped sharpness
    t: float = DEFAULT_EPS  # fixed
    k: int = 1  # k_step

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(f"unknown time sampler {self.kind!r}; choose from {sorted(_KINDS)}")
        if not 0.0 <= self.eps < 1.0:
            raise ConfigError(f"time sampler eps must be in [0, 1), got {self.eps}")
        if self.kind == "k_step" and self.k < 1:
            raise ConfigError(f"k_step sampler needs k >= 1, got {self.k}")
        if self.kind == "fixed" and not 0.0 <= self.t <= 1.0:
            raise ConfigError(f"fixed time must be in [0, 1], got {self.t}")
        if self.scale <= 0 or self.a <= 0:
            raise ConfigError(f"time sampler scale and a must be > 0, got scale={self.scale}, a={self.a}")

    def __call__(self, batch: int, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> Tensor:
        return _KINDS[self.kind](self, batch, torch.device(device), generator)


def _uniform(s: TimeSampler, b: int, dev: torch.device, g: torch.Generator | None) -> Tensor:
    return torch.rand(b, device=dev, generator=g) * (1 - s.eps) + s.eps


def _logit_normal(s: TimeSampler, b: int, dev: torch.device, g: torch.Generator | None) -> Tensor:
    n = torch.randn(b, device=dev, generator=g)
    return torch.sigmoid(s.loc + s.scale * n) * (1 - s.eps) + s.eps


def _u_shaped(s: TimeSampler, b: int, dev: torch.device, g: torch.Generator | None) -> Tensor:
    # Inverse CDF of p(u) ∝ cosh(a(2u − 1)) on [0, 1]: F(u) = (sinh(a(2u−1)) + sinh a) / (2 sinh a).
    r = torch.rand(b, device=dev, generator=g, dtype=torch.float64)
    u = (torch.asinh((2 * r - 1) * math.sinh(s.a)) / s.a + 1) / 2
    return (u * (1 - s.eps) + s.eps).float()


def _fixed(s: TimeSampler, b: int, dev: torch.device, g: torch.Generator | None) -> Tensor:
    return torch.full((b,), s.t, device=dev)


def _k_step(s: TimeSampler, b: int, dev: torch.device, g: torch.Generator | None) -> Tensor:
    i = torch.randint(0, s.k, (b,), device=dev, generator=g).float()
    return i * (1 - s.eps) / s.k + s.eps


_KINDS = {
    "uniform": _uniform,
    "logit_normal": _logit_normal,
    "u_shaped": _u_shaped,
    "fixed": _fixed,
    "k_step": _k_step,
}


def build_time_sampler(spec: str | dict[str, Any] | TimeSampler) -> TimeSampler:
    """From a name (``"uniform"``) or a mapping (``{"kind": "logit_normal", "scale": 1.0}``)."""
    if isinstance(spec, TimeSampler):
        return spec
    if isinstance(spec, str):
        return TimeSampler(kind=spec)
    if isinstance(spec, dict):
        return build(TimeSampler, spec, "objective.time.")
    raise ConfigError(f"time sampler must be a name or a mapping, got {type(spec).__name__}")
