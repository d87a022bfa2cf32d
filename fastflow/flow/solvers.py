r"""Batched ODE solvers for :math:`\dot x = v(x, t)` from ``t0`` (noise, default ``eps``) to ``t1 = 1``.

Every solver takes ``velocity(x, t) -> v`` with ``t`` a float32 tensor of shape ``[B]`` and
returns a :class:`SolveResult` holding the final state and the number of velocity calls (NFE)
it spent; ``intermediates=True`` also keeps every state it stepped through.

========== ============================================================ =========
solver     update                                                       NFE
========== ============================================================ =========
one_step   :math:`x_1 = x_0 + (1 - t_0)\,v(x_0, t_0)`                    1
euler      :math:`x_{i+1} = x_i + h\,v(x_i, t_i)`                        N
rk2(r)     :math:`k_1=v(x,t),\ k_2=v(x+rhk_1, t+rh),`                    2N
           :math:`x' = x + h[(1-\tfrac{1}{2r})k_1 + \tfrac{1}{2r}k_2]`
heun       rk2(r=1) on the first N−1 intervals, Euler on the last       2N − 1
           (EDM's "no wasted last call"; still second order globally)
rk45       adaptive Dormand–Prince 5(4), per-sample step sizes,          adaptive
           scipy's ``RK45`` step control (``rtol``, ``atol``)
========== ============================================================ =========

:func:`mean_flow` steps a two-time model's *average* velocity ``u(x, t, t_end)`` (MeanFlow):
:math:`x_{i+1} = x_i + (t_{i+1} - t_i)\,u(x_i, t_i, t_{i+1})`, exact for a perfect ``u`` whatever
the number of steps (one step: :math:`x_1 = x_0 + u(x_0, 0, 1)`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from fastflow.errors import ConfigError, SolverError
from fastflow.flow.path import expand_t, time_tensor
from fastflow.flow.time import DEFAULT_EPS

Velocity = Callable[[Tensor, Tensor], Tensor]
AverageVelocity = Callable[[Tensor, Tensor, Tensor], Tensor]  # u(x, t, t_end)


@dataclass
class SolveResult:
    """Final state ``x``, velocity calls ``nfe``, and (optionally) the visited states and times.

    ``times[i]`` is a ``[B]`` tensor: rk45 takes a different time grid per sample.
    """

    x: Tensor
    nfe: int
    trajectory: list[Tensor] | None = None
    times: list[Tensor] | None = None
    sample_nfe: Tensor | None = field(default=None, repr=False)  # rk45: calls per sample

    def per_sample_nfe(self) -> Tensor:
        """Velocity calls per sample ``[B]`` (float): rk45's own count, else the batch's ``nfe`` for each."""
        if self.sample_nfe is not None:
            return self.sample_nfe.float()
        return torch.full((self.x.shape[0],), float(self.nfe), device=self.x.device)


def _check(x: Tensor, what: str) -> Tensor:
    """Fail on NaN/Inf (one host sync: fixed-step solvers check only their result, since a
    non-finite velocity propagates to it; rk45 checks every call, it syncs per step anyway)."""
    if not torch.isfinite(x).all():
        raise SolverError(f"non-finite values in {what}; check the model and its inputs")
    return x


def time_grid(steps: int, t0: float, t1: float) -> list[float]:
    if steps < 1:
        raise ConfigError(f"solver steps must be >= 1, got {steps}")
    return [t0 + (t1 - t0) * i / steps for i in range(steps + 1)]


def _record(keep: bool, traj: list[Tensor], times: list[Tensor], x: Tensor, t: Tensor) -> None:
    if keep:
        traj.append(x)
        times.append(t)


def one_step(velocity: Velocity, x0: Tensor, t0: float = DEFAULT_EPS, t1: float = 1.0,
             intermediates: bool = False) -> SolveResult:
    """``x1 = x0 + (t1 − t0)·v(x0, t0)``: the one-step generator."""
    return euler(velocity, x0, steps=1, t0=t0, t1=t1, intermediates=intermediates)


def euler(velocity: Velocity, x0: Tensor, steps: int, t0: float = DEFAULT_EPS, t1: float = 1.0,
          intermediates: bool = False) -> SolveResult:
    """Explicit Euler on the uniform grid ``t0 … t1`` with ``steps`` intervals: :func:`mean_flow`
    with the velocity at each interval's start standing in for the average over it."""
    return mean_flow(lambda x, t, t_end: velocity(x, t), x0, steps, t0, t1, intermediates)


def mean_flow(average: AverageVelocity, x0: Tensor, steps: int, t0: float = 0.0, t1: float = 1.0,
              intermediates: bool = False) -> SolveResult:
    """``steps`` jumps of the average velocity on the uniform grid ``t0 … t1`` (module docstring)."""
    grid = time_grid(steps, t0, t1)
    traj: list[Tensor] = []
    times: list[Tensor] = []
    _record(intermediates, traj, times, x0, time_tensor(grid[0], x0.shape[0], x0))
    keep = (lambda x, t: _record(True, traj, times, x, t)) if intermediates else None  # noqa: E731
    x = grid_jumps(average, x0, grid, keep)
    return SolveResult(_check(x, "the solution"), steps, traj or None, times or None)


def grid_jumps(average: AverageVelocity, x: Tensor, grid: Sequence[float],
               on_step: Callable[[Tensor, Tensor], None] | None = None) -> Tensor:
    r""":math:`x_{i+1} = x_i + (t_{i+1} - t_i)\,u(x_i, t_i, t_{i+1})` over ``grid``, unchecked and free of
    host syncs: the loop of :func:`mean_flow` and :func:`euler`, and of the exported generators
    (traced). ``on_step(x, t_end)`` sees each state."""
    b = x.shape[0]
    for t, t_end in pairwise(grid):
        end = time_tensor(t_end, b, x)
        x = x + (t_end - t) * average(x, time_tensor(t, b, x), end)
        if on_step is not None:
            on_step(x, end)
    return x


def rk2(velocity: Velocity, x0: Tensor, steps: int, r: float = 0.5, t0: float = DEFAULT_EPS,
        t1: float = 1.0, intermediates: bool = False, last_euler: bool = False) -> SolveResult:
    """Two-stage explicit Runge–Kutta: ``r = 0.5`` midpoint, ``2/3`` Ralston, ``1`` Heun.

    ``last_euler`` takes a plain Euler step on the last interval (saves one call).
    """
    if not 0.0 < r <= 1.0:
        raise ConfigError(f"rk2 needs 0 < r <= 1, got {r}")
    grid = time_grid(steps, t0, t1)
    b = x0.shape[0]
    w2 = 1.0 / (2.0 * r)
    x, nfe, traj, times = x0, 0, [], []
    _record(intermediates, traj, times, x, time_tensor(grid[0], b, x))
    for i in range(steps):
        h = grid[i + 1] - grid[i]
        k1 = velocity(x, time_tensor(grid[i], b, x))
        nfe += 1
        if last_euler and i == steps - 1:
            x = x + h * k1
        else:
            k2 = velocity(x + r * h * k1, time_tensor(grid[i] + r * h, b, x))
            nfe += 1
            x = x + h * ((1 - w2) * k1 + w2 * k2)
        _record(intermediates, traj, times, x, time_tensor(grid[i + 1], b, x))
    return SolveResult(_check(x, "the solution"), nfe, traj or None, times or None)


def heun(velocity: Velocity, x0: Tensor, steps: int, t0: float = DEFAULT_EPS, t1: float = 1.0,
         intermediates: bool = False) -> SolveResult:
    """Heun's method (EDM style): NFE ``2N − 1``, the last interval an Euler step."""
    return rk2(velocity, x0, steps, r=1.0, t0=t0, t1=t1, intermediates=intermediates,
               last_euler=True)


# Dormand–Prince 5(4) tableau, as in scipy.integrate.RK45.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR, _EXPONENT = 0.9, 0.2, 10.0, -1 / 5


def _rms(x: Tensor) -> Tensor:
    """Per-sample root-mean-square over all non-batch dims (scipy's error norm)."""
    return x.flatten(1).pow(2).mean(1).sqrt()


def rk45(velocity: Velocity, x0: Tensor, rtol: float = 1e-5, atol: float = 1e-5,
         t0: float = DEFAULT_EPS, t1: float = 1.0, intermediates: bool = False,
         max_calls: int = 10_000, progress: Callable[[int, int], None] | None = None) -> SolveResult:
    """Adaptive Dormand–Prince with scipy's ``RK45`` step control, one step size per sample.

    Samples that reached ``t1`` are frozen; when ``velocity`` has ``select(idx)`` (as
    :class:`~fastflow.flow.guidance.GuidedVelocity` does) later calls evaluate only the samples
    still integrating. ``nfe`` counts batched calls, ``sample_nfe`` the calls each sample took
    part in (the number scipy would report for it alone).
    Error control runs in float64 whatever the state dtype. ``progress(nfe, active)``, if given, hears
    after every step how many batched calls were spent and how many samples still integrate.
    """
    if rtol <= 0 or atol <= 0:
        raise ConfigError(f"rk45 needs rtol, atol > 0, got {rtol}, {atol}")
    b, dt = x0.shape[0], x0.dtype
    y = x0.double()
    sub: tuple[Tensor, Velocity] | None = None  # (active indices, velocity restricted to them)

    def f(y_: Tensor, t_: Tensor) -> Tensor:
        if sub is None:
            return _check(velocity(y_.to(dt), t_.float()), "velocity").double()
        idx, vel = sub
        out = torch.zeros_like(y_)
        out[idx] = _check(vel(y_[idx].to(dt), t_[idx].float()), "velocity").double()
        return out

    def bcast(s: Tensor) -> Tensor:
        return expand_t(s, y)

    t = torch.full((b,), float(t0), dtype=torch.float64, device=x0.device)
    span = float(t1 - t0)
    active = torch.ones(b, dtype=torch.bool, device=x0.device)
    sample_nfe = torch.zeros(b, dtype=torch.long, device=x0.device)
    traj, times = [], []
    _record(intermediates, traj, times, x0, t.float())

    k1 = f(y, t)
    nfe = 1
    sample_nfe += 1
    # scipy's select_initial_step (order 4), per sample.
    scale = atol + y.abs() * rtol
    d0, d1 = _rms(y / scale), _rms(k1 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = h0.clamp(max=span)
    k_probe = f(y + bcast(h0) * k1, t + h0)
    nfe += 1
    sample_nfe += 1
    d2 = _rms((k_probe - k1) / scale) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, (h0 * 1e-3).clamp(min=1e-6), (0.01 / dmax) ** (1 / 5))
    h_abs = torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h1, span))
    rejected = torch.zeros(b, dtype=torch.bool, device=x0.device)

    can_select = callable(getattr(velocity, "select", None))
    while bool(active.any()):
        if can_select and not bool(active.all()) and (sub is None or len(sub[0]) != int(active.sum())):
            idx = active.nonzero().squeeze(1)
            sub = (idx, velocity.select(idx))
        if nfe >= max_calls:
            raise SolverError(f"rk45 did not reach t={t1} within {max_calls} calls")
        min_step = 10 * (torch.nextafter(t, torch.full_like(t, math.inf)) - t)
        if bool((active & (h_abs < min_step)).any()):
            raise SolverError("rk45 step size fell below the floating-point resolution")
        t_new = torch.minimum(t + h_abs, torch.full_like(t, t1))
        h = torch.where(active, t_new - t, torch.zeros_like(t))
        hb = bcast(h)
        ks = [k1]
        for s in range(1, 6):
            dy = sum(a * k for a, k in zip(_A[s], ks, strict=False))
            ks.append(f(y + hb * dy, t + _C[s] * h))
        y_new = y + hb * sum(bi * k for bi, k in zip(_B, ks, strict=False))
        k7 = f(y_new, t + h)
        ks.append(k7)
        nfe += 6
        sample_nfe += 6 * active.long()
        if progress is not None:
            progress(nfe, int(active.sum()))
        err = hb * sum(e * k for e, k in zip(_E, ks, strict=False))
        scale = atol + torch.maximum(y.abs(), y_new.abs()) * rtol
        err_norm = _rms(err / scale)
        if not bool(torch.isfinite(err_norm[active]).all()):
            raise SolverError("rk45 error estimate is not finite")
        accept = active & (err_norm < 1)
        grow = torch.where(err_norm == 0, torch.full_like(err_norm, _MAX_FACTOR),
                           (_SAFETY * err_norm.clamp(min=1e-300) ** _EXPONENT).clamp(max=_MAX_FACTOR))
        grow = torch.where(rejected, grow.clamp(max=1.0), grow)
        shrink = (_SAFETY * err_norm.clamp(min=1e-300) ** _EXPONENT).clamp(min=_MIN_FACTOR)
        h_abs = torch.where(accept, h_abs * grow, torch.where(active, h_abs * shrink, h_abs))
        rejected = torch.where(accept, torch.zeros_like(rejected), rejected | active)
        ab = bcast(accept.double()).bool()
        y = torch.where(ab, y_new, y)
        k1 = torch.where(ab, k7, k1)
        t = torch.where(accept, t_new, t)
        active = active & (t < t1)
        if bool(accept.any()):
            _record(intermediates, traj, times, y.to(dt), t.float())
    return SolveResult(y.to(dt), nfe, traj or None, times or None, sample_nfe)


SOLVERS: dict[str, Callable[..., SolveResult]] = {
    "one_step": one_step,
    "euler": euler,
    "heun": heun,
    "rk2": rk2,
    "rk45": rk45,
}


def options_for(solver: str, **options: Any) -> dict[str, Any]:
    """The ``options`` that ``solver`` takes (by its signature: rk45's ``rtol``, ``atol``, ``progress``,
    ``max_calls``; rk2's ``r``), the others and the ``None`` ones dropped: callers state options once,
    whatever the solver, and each solver's defaults apply to what they leave out."""
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; choose from {sorted(SOLVERS)}")
    takes = inspect.signature(SOLVERS[solver]).parameters
    return {k: v for k, v in options.items() if k in takes and v is not None}


def solve(name: str, velocity: Velocity, x0: Tensor, steps: int | None = None,
          **kwargs: float | bool) -> SolveResult:
    """Dispatch by name. ``steps`` is ignored by ``one_step`` and ``rk45``."""
    if name not in SOLVERS:
        raise ConfigError(f"unknown solver {name!r}; choose from {sorted(SOLVERS)}")
    fn = SOLVERS[name]
    if name in ("euler", "heun", "rk2"):
        if steps is None:
            raise ConfigError(f"solver {name!r} needs steps")
        return fn(velocity, x0, steps, **kwargs)
    return fn(velocity, x0, **kwargs)
