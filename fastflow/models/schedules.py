r"""Noise schedules of diffusers models seen as fastflow time (t = 0 noise, t = 1 data).

**VP (DDPM/DDIM-style)** teachers (ε-, v- or x-prediction over a discrete schedule
:math:`\bar\alpha_k`) see :math:`x_k = \alpha_k x_1 + \sigma_k\varepsilon` with
:math:`\alpha = \sqrt{\bar\alpha}`, :math:`\sigma = \sqrt{1-\bar\alpha}`. Dividing by
:math:`\alpha + \sigma` gives our path

.. math:: y = \frac{x_k}{\alpha+\sigma} = t\,x_1 + (1-t)\,\varepsilon,\qquad
          t = \frac{\alpha}{\alpha+\sigma},\quad \operatorname{logit} t = \log\frac{\alpha}{\sigma} = \lambda,

so our time is a re-parametrised log-SNR. The velocity is :math:`v = \hat x_1 - \hat\varepsilon`
from the model's predictions; a continuous t maps to a fractional timestep by interpolating k
linearly in λ. Times outside the schedule's range query the model at the end of its range, as DDIM
does at its first step.

**Flow matching** (``FlowMatchEulerDiscreteScheduler``, or any scheduler with
``prediction_type: flow_prediction``: SD3-, Flux- and SANA-style models) is a rectified flow
already: :math:`x_\sigma = (1-\sigma)\,x_1 + \sigma\,\varepsilon` is our path at
:math:`t = 1 - \sigma`, the model is queried at timestep :math:`K\sigma` and predicts
:math:`\varepsilon - x_1`, so :math:`v = -\text{output}`. A sampling ``shift`` only moves the
scheduler's grid, not the model's input, so it plays no part here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastflow.errors import ConfigError
from fastflow.utils.io import read_json

#: How a denoiser's output relates to the state: VP kinds (need ᾱ_k), ``velocity`` (outputs our v at
#: timestep K(1 − t): InstaFlow's students) and ``flow`` (outputs ε − x1 at K(1 − t): flow-matching models).
PREDICTIONS = ("epsilon", "v_prediction", "sample", "velocity", "flow")
VP_PREDICTIONS = ("epsilon", "v_prediction", "sample")


class VPSchedule:
    r"""A diffusers scheduler's :math:`\bar\alpha_k` seen as fastflow time (see module docstring).
    All maps are torch ops on the times' device (no host round trip per call)."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        a = alphas_cumprod.double().clamp(1e-12, 1 - 1e-12)
        self.lam = 0.5 * torch.log(a / (1 - a))  # decreasing in k
        if not bool((self.lam.diff() < 0).all()):
            raise ConfigError("alphas_cumprod must decrease strictly with the timestep")
        self._increasing: dict[torch.device, Tensor] = {}
        self.t_min, self.t_max = self.t_of_timestep(len(a) - 1), self.t_of_timestep(0)

    def t_of_timestep(self, k: float) -> float:
        i = min(int(k), len(self.lam) - 2)
        lam = float(self.lam[i] + (k - i) * (self.lam[i + 1] - self.lam[i]))
        return 1.0 / (1.0 + math.exp(-lam))

    def timestep(self, t: Tensor) -> Tensor:
        """Fractional timestep (float64) of (clamped) times ``t``: ``k`` linear in λ between grid points."""
        if t.device not in self._increasing:
            self._increasing[t.device] = self.lam.flip(0).to(t.device)
        rev = self._increasing[t.device]  # rev[j] = λ at timestep K − 1 − j
        lam = torch.logit(t.double().clamp(self.t_min, self.t_max))
        j = torch.searchsorted(rev, lam).clamp(1, len(rev) - 1)
        lo, hi = rev[j - 1], rev[j]
        return (len(rev) - 1) - ((j - 1) + (lam - lo) / (hi - lo))

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``α, σ`` (float64) of the VP state at (clamped) times ``t``: α/σ = t/(1−t), α² + σ² = 1."""
        lam = torch.logit(t.double().clamp(self.t_min, self.t_max))
        return torch.sigmoid(2 * lam).sqrt(), torch.sigmoid(-2 * lam).sqrt()


def vp_predictions(out: Tensor, x_k: Tensor, alpha: Tensor, sigma: Tensor, prediction: str) -> tuple[Tensor, Tensor]:
    """``(x̂1, ε̂)`` from a VP model output at state ``x_k = α x1 + σ ε``."""
    if prediction == "epsilon":
        return (x_k - sigma * out) / alpha, out
    if prediction == "v_prediction":  # v_VP = α ε − σ x1
        return alpha * x_k - sigma * out, sigma * x_k + alpha * out
    if prediction == "sample":
        return out, (x_k - alpha * out) / sigma
    raise ConfigError(f"unknown VP prediction type {prediction!r}")


@dataclass
class SchedulerInfo:
    """What fastflow needs of a diffusers scheduler: its family, its own prediction type, the
    number of training timesteps, and (VP) the schedule."""

    kind: str  # "vp" or "flow"
    prediction: str
    num_train_timesteps: int
    vp: VPSchedule | None = None


def is_flow_matching(config: dict[str, Any]) -> bool:
    """A flow-matching scheduler config: ``FlowMatch…`` classes, flow sigmas or flow prediction."""
    return (str(config.get("_class_name", "")).startswith("FlowMatch") or bool(config.get("use_flow_sigmas"))
            or config.get("prediction_type") == "flow_prediction")


def read_scheduler(config_file: Path) -> SchedulerInfo:
    """The scheduler of a local diffusers directory (``scheduler_config.json``), or one clear error."""
    config = read_json(config_file)
    if not isinstance(config, dict):
        raise ConfigError(f"{config_file}: not a scheduler config (not a JSON object)")
    steps = int(config.get("num_train_timesteps", 1000))
    if is_flow_matching(config):
        return SchedulerInfo("flow", "flow", steps)
    import diffusers

    cls = getattr(diffusers, str(config.get("_class_name", "DDPMScheduler")), None)
    try:
        alphas = cls.from_config(config).alphas_cumprod
    except (AttributeError, TypeError, ValueError, KeyError) as e:  # an unknown class, no ᾱ, a bad config
        raise ConfigError(f"{config_file}: {config.get('_class_name')!r} is neither a VP (ᾱ_k) nor a flow-matching "
                          f"scheduler ({e.__class__.__name__}: {e})") from None
    return SchedulerInfo("vp", str(config.get("prediction_type", "epsilon")), steps, VPSchedule(alphas))
