r"""SlimFlow's Flow-Guided Distillation: one-step distillation plus guidance from a 2-RF teacher
:math:`v_\phi` on fresh noise.

.. math::
    L &= L_\text{distill} + \lambda L_\text{guide},\qquad
    L_\text{distill} = d\big(z + (1-\epsilon)v_\theta(z, \epsilon),\ x_1\big)
    \text{ on pairs}\\
    v_s &= v_\theta(z_f, \epsilon),\quad t' \sim U(0.2, 0.8),\quad
    \tilde x = z_f + t' v_s \ (\text{strict: } z_f + t' v_\phi(z_f, \epsilon)),\\
    \hat x_1 &= \tilde x + (1 - t')\,v_\phi(\tilde x, t'),\qquad
    L_\text{guide} = d\big(z_f + v_s,\ \mathrm{sg}(\hat x_1)\big)

For class-conditional students the fresh batch gets random labels and the teacher velocity is
guided, :math:`v_\phi \to v^\alpha_\phi` (InstaFlow distils from the 2-RF with ``cfg_scale`` α = 1.5).
The target :math:`\hat x_1` is a two-step prediction (a student or teacher first step, then a
teacher step) computed without gradient; the pair batch and the fresh batch go through the
student in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from fastflow.data.base import Batch
from fastflow.flow.guidance import cfg_velocity
from fastflow.flow.path import expand_t, predict_x1
from fastflow.objectives.distill import Distill
from fastflow.objectives.options import option, teacher_option, weights_option


@dataclass
class FlowGuidedDistill(Distill):
    hidden_options: ClassVar[tuple[str, ...]] = ("k",)  # one-step only
    teacher: nn.Module = teacher_option()
    teacher_weights: str = weights_option()
    lam: float = option(1.0, valid=lambda v: v >= 0.0, means=">= 0")
    strict: bool = option(False)
    t_range: tuple[float, float] = (0.2, 0.8)
    cfg_scale: float = option(1.0, valid=lambda v: v >= 0.0, means=">= 0")

    def frozen(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def guidance_target(self, z: Tensor, v_s: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """``x̂1`` from fresh noise ``z`` given the student's first-step velocity ``v_s``."""
        tt = expand_t(t, z)
        v_t = cfg_velocity(self.teacher, cond, self.cfg_scale)
        with torch.no_grad():
            first = v_t(z, torch.full_like(t, self.eps)) if self.strict else v_s
            x_mid = z + tt * first
            return predict_x1(x_mid, t, v_t(x_mid, t))

    def __call__(self, model: nn.Module, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        z, x1 = self.pairs(batch)
        b = len(z)
        zf = torch.randn_like(z)
        cond = cond_f = None
        if self.num_classes:
            cond = batch.label
            cond_f = torch.randint(0, self.num_classes, (b,), device=z.device)
        both = None if cond is None else torch.cat([cond, cond_f])
        t0 = torch.full((2 * b,), self.eps, device=z.device)
        v = model(torch.cat([z, zf]), t0, both)
        v_pair, v_s = v[:b], v[b:]
        distill = self.distance(z + (1 - self.eps) * v_pair, x1).mean()
        lo, hi = self.t_range
        t = torch.rand(b, device=z.device) * (hi - lo) + lo
        target = self.guidance_target(zf, v_s.detach(), t, cond_f)
        guide = self.distance(zf + v_s, target).mean()
        loss = distill + self.lam * guide
        return loss, {"loss": loss.detach(), "distill": distill.detach(), "guide": guide.detach()}
