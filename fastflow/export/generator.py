r"""The exported object: a generator ``(z[, cond]) → image``, not just the velocity net.

``Generator(model, steps=k)`` runs ``k`` Euler steps on the grid ``t_i = ε + i(1-ε)/k`` with the
:math:`x \leftarrow x + h\,v(x, t)` arithmetic inside, so one forward pass is the whole
sampler (``k = 1``: :math:`x_1 = z + (1-\epsilon)v(z, \epsilon)`). It matches
:func:`fastflow.flow.solvers.euler` exactly and traces cleanly under ``torch.export``.
A two-time (MeanFlow) model steps its average velocity instead, on the grid ``t_i = i/k``:
:math:`x \leftarrow x + h\,u(x, t_i, t_{i+1})` (``k = 1``: :math:`x_1 = z + u(z, 0, 1)`), as
:func:`fastflow.flow.solvers.mean_flow`. ``SRGenerator`` is OFTSR's one-step super-resolution with
the knob ``τ`` as an input. ``TextGenerator`` is a text-to-image pipeline's generator
``(z, emb) → latent`` with classifier-free guidance inside.
"""

from __future__ import annotations

from torch import Tensor, nn

from fastflow.errors import ConfigError
from fastflow.flow.guidance import cfg_velocity
from fastflow.flow.sample import check_mean_flow_cfg, is_two_time
from fastflow.flow.solvers import grid_jumps, time_grid
from fastflow.flow.sr import sr_one_step
from fastflow.flow.time import DEFAULT_EPS


class Generator(nn.Module):
    input_names = ("z", "cond")

    def __init__(self, model: nn.Module, steps: int = 1, t0: float | None = None, cfg_scale: float = 1.0) -> None:
        super().__init__()
        self.model, self.steps, self.two_time, self.cfg_scale = model, steps, is_two_time(model), cfg_scale
        check_mean_flow_cfg(model, cfg_scale)
        self.grid = time_grid(steps, (0.0 if self.two_time else DEFAULT_EPS) if t0 is None else t0, 1.0)

    @property
    def config(self):  # noqa: ANN201 - the wrapped model's config
        return self.model.config

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.two_time:
            return grid_jumps(lambda x, t, t_end: self.model(x, t, cond, t_end=t_end), z, self.grid)
        v = cfg_velocity(self.model, cond, self.cfg_scale)  # α = 1: the plain conditional call
        return grid_jumps(lambda x, t, t_end: v(x, t), z, self.grid)


class TextGenerator(Generator):
    r"""``(z, emb) → latent``: :class:`Generator` over text embeddings, guided with
    :math:`\alpha\,v(x, t \mid e) + (1-\alpha)\,v(x, t \mid \varnothing)`; with α ≠ 1 both branches run
    as one call on a doubled batch, the null prompt's embedding baked into the graph."""

    input_names = ("z", "emb")

    def __init__(self, model: nn.Module, steps: int = 1, cfg_scale: float = 1.0) -> None:
        if is_two_time(model):
            raise ConfigError("a MeanFlow model exports as a plain generator, not a text pipeline")
        super().__init__(model, steps, cfg_scale=cfg_scale)


class SRGenerator(nn.Module):
    r"""OFTSR's one-step super-resolution with the knob as an input:
    ``(lq, noise, τ) → x0 + u_θ(x0, τ | lq)`` with :math:`x_0 = \sqrt{1-\sigma_p^2}\,lq + \sigma_p\,noise`."""

    input_names = ("lq", "noise", "tau")

    def __init__(self, model: nn.Module, sigma_p: float) -> None:
        super().__init__()
        self.model, self.sigma_p = model, sigma_p

    @property
    def config(self):  # noqa: ANN201 - the wrapped model's config
        return self.model.config

    def forward(self, lq: Tensor, noise: Tensor, tau: Tensor) -> Tensor:
        return sr_one_step(self.model, lq, tau, self.sigma_p, noise)


class Velocity(nn.Module):
    """The velocity field alone, ``(x, t) → v(x, t)`` (``--velocity``: a sampler of one's own drives it)."""

    input_names = ("x", "t")

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self):  # noqa: ANN201 - the wrapped model's config
        return self.model.config

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model(x, t)
