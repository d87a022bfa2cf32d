r"""MeanFlow (Geng et al., 2025): a teacher-free one-step generator trained from data alone.

Written in fastflow's convention (``t = 0`` noise, ``t = 1`` data, :math:`x_t = t\,x_1 + (1-t)\,z`;
the paper runs time the other way). A two-time network :math:`u_\theta(x, s, t)` predicts the
*average* velocity of the flow over :math:`[s, t]`, :math:`s \le t`:

.. math:: (t - s)\,u(x_s, s, t) = \int_s^t v(x_\tau, \tau)\,d\tau ,

so one jump is exact: :math:`x_t = x_s + (t - s)\,u(x_s, s, t)`, and one step from noise is
:math:`x_1 = z + u(z, 0, 1)`. Differentiating the definition in :math:`s` along the trajectory
(:math:`dx_s/ds = v(x_s, s)`, :math:`t` fixed) gives :math:`-v = -u + (t - s)\,\tfrac{d}{ds}u`, the
**MeanFlow identity**

.. math:: u(x_s, s, t) = v(x_s, s) + (t - s)\,\frac{d}{ds}u(x_s, s, t),\qquad
          \frac{d}{ds}u = \partial_x u\;v + \partial_s u ,

a total derivative that is one Jacobian-vector product (forward-mode AD) of :math:`u_\theta` with tangents
:math:`(v, 1, 0)` on :math:`(x, s, t)`. With the conditional velocity :math:`v = x_1 - z` of the
straight path, the regression target (under stop-gradient) is

.. math:: u_{tgt} = v + (t - s)\,\mathrm{sg}\big(\partial_x u_\theta\,v + \partial_s u_\theta\big),
          \qquad L = \mathrm{sg}(w)\,\lVert u_\theta(x_s, s, t) - u_{tgt}\rVert^2,\quad
          w = (\lVert\Delta\rVert^2 + c)^{-p}

(the adaptive weight, ``p = 1``, ``c = 1e-3``). For :math:`s = t` the target is :math:`v` and the
loss is flow matching on :math:`u(x, t, t) = v(x, t)`. Times: two draws from ``time`` (logit-normal;
the paper's ``(-0.4, 1.0)`` in its time is ``loc = +0.4`` here), :math:`s` the smaller, :math:`t` the
larger; a fraction ``1 − ratio`` of samples (75 %) takes :math:`t = s`.

Classifier-free guidance folded into the target (the paper's §4.2 and its Appendix B.1, as the
authors' code writes it): the tangent and target use

.. math:: \tilde v = \omega\,v + \kappa\,\mathrm{sg}(u_\theta(x_s, s, s \mid c))
          + (1-\omega-\kappa)\,\mathrm{sg}(u_\theta(x_s, s, s \mid \varnothing))

for samples that keep their label (``cfg_scale`` ω, ``kappa`` κ; ω = 1, κ = 0 outside the guidance
interval ``cfg_interval`` of times :math:`s`; labels dropped with probability ``cond_drop`` train the
unconditional branch with plain :math:`v`), so the one-step model samples guided at cfg 1. The two
velocities of the mixture are the model's own in evaluation mode (no dropout; the authors' ``train=False``):
the target is deterministic for fixed inputs whatever the model's mode.

Defaults and their sources: ω = 1, κ = 0 (no guidance unless asked; the authors' ImageNet config
takes ω = 1, κ = 0.5, whose effective scale is ω / (1 − κ) = 2); the interval [0, 1] is theirs
(their time runs the other way: their ``[t_start, t_end]`` is our ``[1 − t_end, 1 − t_start]``);
``weight_c`` = 1e-3 is the authors' PyTorch CIFAR-10 release (with ``weight_p`` 0.75 there), whose
small images are closer to digits than the JAX ImageNet release's 0.01 on latents (``weight_p`` 1,
ours) — and the digits results in ``docs/meanflow.md`` were measured with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from fastflow.data.base import Batch
from fastflow.flow.path import expand_t, interpolate, velocity_target
from fastflow.flow.time import TimeSampler
from fastflow.objectives.base import LoopSupport, ObjectiveDefaults, drop_labels, evaluation_mode
from fastflow.objectives.options import option
from fastflow.objectives.rf import cond_drop_option, time_option

#: the paper's ImageNet times, in fastflow's convention (its CIFAR-10 choice (-2, 2) is loc 2, scale 2)
DEFAULT_TIME = TimeSampler(kind="logit_normal", loc=0.4, scale=1.0, eps=0.0)


def interval_times(time: TimeSampler, ratio: float, b: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(s, t)`` with ``s ≤ t``: two draws sorted; a fraction ``1 − ratio`` gets ``t = s``."""
    a, c = time(b, device), time(b, device)
    s, t = torch.minimum(a, c), torch.maximum(a, c)
    same = torch.rand(b, device=device) >= ratio
    return s, torch.where(same, s, t)


def meanflow_target(u_of: Callable[[Tensor, Tensor], Tensor], x_s: Tensor, s: Tensor, t: Tensor,
                    v: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(u, u_tgt)``: the prediction :math:`u(x_s, s, t)` (differentiable) and the identity's target
    :math:`v + (t-s)\,(\partial_x u\,v + \partial_s u)` (detached), one forward pass with dual
    tensors for both; ``u_of(x, s)`` is the model with ``t`` (and the condition) fixed.

    Forward-mode AD through ``torch.autograd.forward_ad`` rather than ``torch.func.jvp``: the same
    JVP, but it also runs through a ``DistributedDataParallel`` model (functorch's wrapped tensors
    have no storage for DDP's buckets)."""
    with fwAD.dual_level():
        out = u_of(fwAD.make_dual(x_s, v), fwAD.make_dual(s, torch.ones_like(s)))
        u, du_ds = fwAD.unpack_dual(out)
    if du_ds is None:  # the model does not depend on its inputs (a constant): the derivative is 0
        du_ds = torch.zeros_like(u)
    return u, (v + expand_t(t - s, v) * du_ds).detach()


@dataclass
class MeanFlow(ObjectiveDefaults):
    """The MeanFlow objective (module docstring). Needs a two-time model (``model.times: 2``)."""

    preview_steps: ClassVar[int | None] = 1  # one average-velocity step
    model_times: ClassVar[int] = 2
    not_compilable: ClassVar[str] = ("MeanFlow's target is a forward-mode JVP (dual tensors), which Dynamo "
                                     "does not trace")
    time: TimeSampler = time_option(DEFAULT_TIME)
    ratio: float = option(0.25, valid=lambda v: 0.0 <= v <= 1.0, means="in [0, 1]")
    weight_p: float = option(1.0, valid=lambda v: v >= 0.0, means=">= 0")
    weight_c: float = option(1e-3, valid=lambda v: v > 0.0, means="> 0")
    num_classes: int = 0  # from the model, not the config
    cond_drop: float = cond_drop_option()
    cfg_scale: float = option(1.0, valid=lambda v: v >= 0.0, means=">= 0")
    kappa: float = option(0.0, valid=lambda v: 0.0 <= v < 1.0, means="in [0, 1)")
    cfg_interval: tuple[float, float] = option((0.0, 1.0), valid=lambda v: 0.0 <= v[0] <= v[1] <= 1.0,
                                               means="[lo, hi] with 0 <= lo <= hi <= 1")
    #: one forward-mode pass gives the prediction and the target (the loop says: :meth:`bind`)
    joint_jvp: bool = dataclasses.field(default=True, compare=False)

    def bind(self, support: LoopSupport) -> MeanFlow:
        return dataclasses.replace(self, joint_jvp=support.joint_jvp)

    def guided_velocity(self, model: nn.Module, x_s: Tensor, s: Tensor, v: Tensor, label: Tensor | None) -> Tensor:
        r""":math:`\tilde v` (module docstring): ``v`` mixed with the model's own velocities, evaluated
        without dropout, for samples that keep their label and whose ``s`` lies in ``cfg_interval``."""
        if label is None or (self.cfg_scale == 1.0 and self.kappa == 0.0):
            return v
        null = torch.full_like(label, self.num_classes)
        with torch.no_grad(), evaluation_mode(model):
            if self.kappa == 0.0:  # the conditional velocity has weight 0: one plain call
                v_null, v_cond = model(x_s, s, null, t_end=s), torch.zeros_like(v)
            else:  # both in one call on a doubled batch
                v_null, v_cond = model(torch.cat([x_s, x_s]), torch.cat([s, s]), torch.cat([null, label]),
                                       t_end=torch.cat([s, s])).chunk(2)
        lo, hi = self.cfg_interval
        on = (label != self.num_classes) & (s >= lo) & (s <= hi)
        omega = expand_t(torch.where(on, self.cfg_scale, 1.0).to(v.dtype), v)
        kappa = expand_t(torch.where(on, self.kappa, 0.0).to(v.dtype), v)
        return omega * v + kappa * v_cond + (1.0 - omega - kappa) * v_null

    def __call__(self, model: nn.Module, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        x1 = batch.x
        b = x1.shape[0]
        z = torch.randn_like(x1)
        s, t = interval_times(self.time, self.ratio, b, x1.device)
        x_s = interpolate(z, x1, s)
        label = drop_labels(batch.label, self.num_classes, self.cond_drop) if self.num_classes else None
        v = self.guided_velocity(model, x_s, s, velocity_target(z, x1), label)

        u_of = lambda x, s_: model(x, s_, label, t_end=t)  # noqa: E731
        if not self.joint_jvp:
            # the (detached) target from a JVP pass without grad, then the prediction from a plain pass
            # with the same random draws (dropout): the same u and target, one more forward pass
            with torch.random.fork_rng(devices=[x_s.device] if x_s.is_cuda else []), torch.no_grad():
                _, target = meanflow_target(u_of, x_s, s, t, v)
            u = u_of(x_s, s)
        else:
            u, target = meanflow_target(u_of, x_s, s, t, v)
        sq = (u - target).float().pow(2).flatten(1).sum(1)
        w = (sq.detach() + self.weight_c).pow(-self.weight_p)
        loss = (w * sq).mean()
        return loss, {"loss": loss.detach(), "mse": sq.detach().mean() / x1[0].numel()}
