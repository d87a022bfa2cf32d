r"""OFTSR: one-step flow super-resolution with a fidelity ↔ realism knob.

**Teacher** (:class:`SRFlow`): a conditional flow from the degraded image to the HR image,
:math:`x_0 = \sqrt{1-\sigma_p^2}\,\mathrm{lq} + \sigma_p\epsilon`, :math:`x_1 = \mathrm{HR}`,
input ``cat([x_t, lq])`` (the model's image condition), standard flow-matching loss.

The start state and the one-step map are :mod:`fastflow.flow.sr`.

**Student** (:class:`OFTSRDistill`): :math:`u_\theta(x_0, t, \mathrm{lq})` is the average velocity
of the teacher trajectory from :math:`x_0` to time :math:`t` (:math:`x_t \approx x_0 + t\,u_\theta`),
and its one-step output at knob :math:`\tau` is :math:`\hat x(\tau) = x_0 + u_\theta(x_0, \tau)`.

.. math::
    x_t &= x_0 + t\,\mathrm{sg}(u_\theta(x_0, t)),\qquad
    x_{t+\Delta} = \mathrm{RK2}_\phi(x_t, t, \Delta)\ \text{(midpoint)}\\
    L_\text{distill} &= d\big(u_\theta(x_0, t+\Delta),\ \mathrm{sg}((x_{t+\Delta} - x_0)/(t+\Delta))\big)\\
    L_\text{boundary} &= d\big(u_\theta(x_0, t_\min),\ \mathrm{sg}(v_\phi(x_0, t_\min))\big)\\
    L_\text{align} &= d\big(x_0 + u_\theta(x_0, t),\ \mathrm{sg}(x_t + (1-t)\,v_\phi(x_t, t))\big)

with :math:`t \sim U(t_\min, t_\max - \Delta)`, :math:`t_\min = 0.01`, :math:`t_\max = 0.99`,
:math:`\Delta = 0.05` and weights 1 / 0.1 / 0.01 (the paper's configs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fastflow.data.base import Batch
from fastflow.errors import DataError
from fastflow.flow.guidance import Cond
from fastflow.flow.path import expand_t, predict_x1
from fastflow.flow.sr import DEFAULT_SIGMA_P, sr_map, sr_start
from fastflow.objectives.base import ObjectiveDefaults
from fastflow.objectives.distances import Distance, distance_option
from fastflow.objectives.options import option, teacher_option, weights_option
from fastflow.objectives.rf import RectifiedFlow


def sigma_p_option() -> Any:
    """``sigma_p``: the noise of the start state ``x0``."""
    return option(DEFAULT_SIGMA_P, valid=lambda v: 0.0 <= v < 1.0, means="in [0, 1)")


def _lq(batch: Batch) -> Tensor:
    if batch.image is None:
        raise DataError("super-resolution needs degraded inputs: set data.name=sr")
    return batch.image


@dataclass
class SRFlow(RectifiedFlow):
    """The OFTSR teacher: flow matching from the noised degraded image to the HR image."""

    hidden_options: ClassVar[tuple[str, ...]] = ("cond_drop",)  # conditioned on an image, not a label
    sigma_p: float = sigma_p_option()

    def source(self, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        return sr_start(_lq(batch), self.sigma_p), {}

    def condition(self, batch: Batch) -> Cond:
        return {"image": _lq(batch)}

    def sample_inputs(self, batch: Batch) -> tuple[Tensor, Cond]:
        """Start states and conditions for preview grids of the teacher."""
        return sr_start(_lq(batch), self.sigma_p), self.condition(batch)


@dataclass
class OFTSRDistill(ObjectiveDefaults):
    checks: ClassVar = ((lambda o: o["t_min"] < o["t_max"], "objective.t_min must be below objective.t_max"),)
    preview_steps: ClassVar[int | None] = 1  # a one-step student, previewed by :meth:`preview`
    preview_tau: ClassVar[float] = 0.5  # the knob of training previews (``fastflow sr``'s default)
    teacher: nn.Module = teacher_option()
    teacher_weights: str = weights_option()
    sigma_p: float = sigma_p_option()
    distance: Distance = distance_option()
    delta: float = option(0.05, valid=lambda v: 0.0 < v < 1.0, means="in (0, 1)")
    t_min: float = option(0.01, valid=lambda v: 0.0 <= v < 1.0, means="in [0, 1)")
    t_max: float = option(0.99, valid=lambda v: 0.0 < v <= 1.0, means="in (0, 1]")
    weights: tuple[float, float, float] = option((1.0, 0.1, 0.01), valid=lambda w: min(w) >= 0.0,
                                                 means="[distill, boundary, align], each >= 0")

    def frozen(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def sample_inputs(self, batch: Batch) -> tuple[Tensor, Cond]:
        """Start states and conditions for preview grids of the student."""
        lq = _lq(batch)
        return sr_start(lq, self.sigma_p), {"image": lq}

    def preview(self, model: nn.Module, x0: Tensor, cond: Cond) -> tuple[Tensor, str]:
        """The student's one-step output at :attr:`preview_tau` from the preview starts, and its caption."""
        return sr_map(model, x0, cond["image"], self.preview_tau), f"one step at τ = {self.preview_tau:g} (NFE 1)"

    def teacher_v(self, x: Tensor, t: Tensor, lq: Tensor) -> Tensor:
        return self.teacher(x, t, {"image": lq})

    def rk2(self, x: Tensor, t: Tensor, lq: Tensor) -> Tensor:
        """One midpoint step of the teacher from ``t`` to ``t + Δ``."""
        k1 = self.teacher_v(x, t, lq)
        k2 = self.teacher_v(x + 0.5 * self.delta * k1, t + 0.5 * self.delta, lq)
        return x + self.delta * k2

    def __call__(self, model: nn.Module, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        lq = _lq(batch)
        x0 = sr_start(lq, self.sigma_p)
        b = len(x0)
        t = torch.rand(b, device=x0.device) * (self.t_max - self.delta - self.t_min) + self.t_min
        t_next = t + self.delta
        t_lo = torch.full_like(t, self.t_min)
        # one student call for the three times: t (bootstrap/alignment), t + Δ, t_min
        u = model(torch.cat([x0, x0, x0]), torch.cat([t, t_next, t_lo]), {"image": torch.cat([lq, lq, lq])})
        u_t, u_next, u_lo = u.chunk(3)
        with torch.no_grad():
            x_t = x0 + expand_t(t, x0) * u_t
            target_next = (self.rk2(x_t, t, lq) - x0) / expand_t(t_next, x0)
            target_lo = self.teacher_v(x0, t_lo, lq)
            target_align = predict_x1(x_t, t, self.teacher_v(x_t, t, lq))
        distill = self.distance(u_next, target_next).mean()
        boundary = self.distance(u_lo, target_lo).mean()
        align = self.distance(x0 + u_t, target_align).mean()
        w = self.weights
        loss = w[0] * distill + w[1] * boundary + w[2] * align
        return loss, {"loss": loss.detach(), "distill": distill.detach(), "boundary": boundary.detach(),
                      "align": align.detach()}
