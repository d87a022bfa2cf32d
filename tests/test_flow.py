"""Flow core: paths, time samplers, solvers against closed forms and scipy, CFG, straightness."""

import math

import numpy as np
import pytest
import torch

from fastflow.errors import ConfigError, SolverError
from fastflow.flow import (
    TimeSampler,
    build_time_sampler,
    cfg_velocity,
    euler,
    heun,
    interpolate,
    one_step,
    predict_x1,
    rk2,
    rk45,
    solve,
    straightness,
    velocity_target,
)

DT = torch.float64


def test_path_convention() -> None:
    x0, x1 = torch.randn(4, 3, dtype=DT), torch.randn(4, 3, dtype=DT)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=DT)
    xt = interpolate(x0, x1, t)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[3], x1[3])
    assert torch.allclose(xt[1], 0.25 * x1[1] + 0.75 * x0[1])
    v = velocity_target(x0, x1)
    # on the straight path the one-step prediction from any t recovers x1 exactly
    assert torch.allclose(predict_x1(xt, t, v), x1)


@pytest.mark.parametrize("kind", ["uniform", "logit_normal", "u_shaped", "fixed", "k_step"])
def test_time_samplers_range(kind: str) -> None:
    s = TimeSampler(kind=kind, k=4, t=0.3)
    t = s(10_000)
    assert t.shape == (10_000,) and t.dtype == torch.float32
    assert float(t.min()) >= s.eps - 1e-7 and float(t.max()) <= 1.0


def test_time_sampler_laws() -> None:
    t = TimeSampler("uniform", eps=1e-3)(200_000, generator=torch.Generator().manual_seed(0))
    assert abs(float(t.mean()) - (1 + 1e-3) / 2) < 3e-3
    grid = TimeSampler("k_step", k=4, eps=1e-3)(10_000).unique()
    expected = torch.tensor([i * (1 - 1e-3) / 4 + 1e-3 for i in range(4)])
    assert torch.allclose(grid, expected)
    u = TimeSampler("u_shaped", a=4.0, eps=0.0)(200_000)
    # U-shaped: more mass near both ends than in the middle, symmetric
    ends = ((u < 0.1) | (u > 0.9)).float().mean()
    mid = ((u > 0.45) & (u < 0.55)).float().mean()
    assert ends > 5 * mid and abs(float(u.mean()) - 0.5) < 5e-3
    assert float(TimeSampler("fixed", t=0.3)(5).sub(0.3).abs().max()) == 0
    ln = TimeSampler("logit_normal", eps=0.0)(200_000)
    assert abs(float(ln.median()) - 0.5) < 5e-3


def test_time_sampler_errors() -> None:
    with pytest.raises(ConfigError):
        build_time_sampler("gamma")
    with pytest.raises(ConfigError):
        build_time_sampler({"kind": "uniform", "bogus": 1})
    with pytest.raises(ConfigError):
        TimeSampler("k_step", k=0)


# dx/dt = a·x with per-sample rate a: x(1) = x(t0)·exp(a(1 − t0)).
def _linear(a: torch.Tensor):
    return lambda x, t: a[:, None] * x


def _exact_linear(x0: torch.Tensor, a: torch.Tensor, t0: float) -> torch.Tensor:
    return x0 * torch.exp(a * (1 - t0))[:, None]


@pytest.mark.parametrize("name,nfe", [("euler", lambda n: n), ("heun", lambda n: 2 * n - 1),
                                      ("rk2", lambda n: 2 * n)])
def test_fixed_step_solvers_nfe_and_accuracy(name: str, nfe) -> None:
    x0 = torch.randn(5, 3, dtype=DT)
    a = torch.linspace(-1.0, 1.0, 5, dtype=DT)
    res = solve(name, _linear(a), x0, steps=64, t0=0.0)
    assert res.nfe == nfe(64)
    err = (res.x - _exact_linear(x0, a, 0.0)).abs().max()
    assert err < (5e-2 if name == "euler" else 1e-3)


def _order(fn, **kw) -> float:
    x0 = torch.randn(4, 2, dtype=DT)
    a = torch.tensor([-1.5, -0.5, 0.7, 1.2], dtype=DT)
    exact = _exact_linear(x0, a, 1e-3)
    errs = [float((fn(_linear(a), x0, n, **kw).x - exact).abs().max()) for n in (16, 32, 64)]
    return float(np.mean([math.log2(errs[i] / errs[i + 1]) for i in range(2)]))


def test_convergence_orders() -> None:
    assert 0.9 < _order(euler) < 1.15
    assert 1.85 < _order(heun) < 2.2
    for r in (0.5, 2 / 3, 1.0):
        assert 1.85 < _order(rk2, r=r) < 2.2


def test_one_step_and_intermediates() -> None:
    x0 = torch.randn(3, 4)
    v = torch.randn(3, 4)
    res = one_step(lambda x, t: v, x0)
    assert res.nfe == 1 and torch.allclose(res.x, x0 + (1 - 1e-3) * v)
    res = euler(lambda x, t: v, x0, steps=5, intermediates=True)
    assert len(res.trajectory) == 6 and torch.allclose(res.trajectory[0], x0)
    assert torch.allclose(res.times[-1], torch.ones(3))


def _nonlinear(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # a stiff-ish, time-dependent, nonlinear field
    return torch.sin(3 * x) * torch.cos(4 * t)[:, None] - 0.5 * x + t[:, None] ** 2


def test_rk45_matches_scipy() -> None:
    from scipy.integrate import solve_ivp

    x0 = torch.randn(6, 3, dtype=DT)
    res = rk45(_nonlinear, x0, rtol=1e-5, atol=1e-5)
    for i in range(6):
        ref = solve_ivp(lambda t, y: _nonlinear(torch.from_numpy(y)[None], torch.tensor([t]))[0].numpy(),
                        (1e-3, 1.0), x0[i].numpy(), method="RK45", rtol=1e-5, atol=1e-5)
        assert np.abs(res.x[i].numpy() - ref.y[:, -1]).max() < 1e-4
        assert abs(int(res.sample_nfe[i]) - ref.nfev) <= 0.2 * ref.nfev
    # a much tighter reference: the solution is accurate to its tolerance
    tight = rk45(_nonlinear, x0, rtol=1e-10, atol=1e-10)
    assert (res.x - tight.x).abs().max() < 1e-4


def test_rk45_closed_form_and_tolerance() -> None:
    x0 = torch.randn(8, 5, dtype=DT)
    a = torch.linspace(-2, 2, 8, dtype=DT)
    loose, tight = rk45(_linear(a), x0, rtol=1e-3, atol=1e-3), rk45(_linear(a), x0, rtol=1e-8, atol=1e-8)
    exact = _exact_linear(x0, a, 1e-3)
    assert (tight.x - exact).abs().max() < 1e-6
    assert (loose.x - exact).abs().max() > (tight.x - exact).abs().max()
    assert tight.nfe > loose.nfe


def test_solvers_reject_nonfinite() -> None:
    bad = lambda x, t: x * float("nan")  # noqa: E731
    for name in ("euler", "heun", "rk45"):
        with pytest.raises(SolverError):
            solve(name, bad, torch.randn(2, 2), steps=2)
    with pytest.raises(ConfigError):
        solve("leapfrog", bad, torch.randn(2, 2), steps=2)


class _CondModel(torch.nn.Module):
    """v = x + label (null label 0 → 0)."""

    def forward(self, x, t, cond=None):
        c = torch.zeros(x.shape[0]) if cond is None else cond.float()
        return x + c[:, None]

    def null_cond(self, cond):
        return torch.zeros_like(cond)


def test_cfg_formula_batched_and_unbatched() -> None:
    m = _CondModel()
    x, t, c = torch.randn(3, 2), torch.rand(3), torch.tensor([1, 2, 3])
    for scale in (0.0, 1.0, 2.5):
        expect = scale * (x + c[:, None]) + (1 - scale) * x
        assert torch.allclose(cfg_velocity(m, c, scale)(x, t), expect)
        assert torch.allclose(cfg_velocity(m, c, scale, null_cond=None)(x, t), expect)


def test_straightness_closed_form() -> None:
    x0 = torch.randn(16, 4, dtype=DT)
    c = torch.randn(16, 4, dtype=DT)
    assert straightness(lambda x, t: c, x0, steps=10) < 1e-20  # straight lines
    # v = 2t·c: x1 − x0 = c, S = ∫ (1 − 2t)² dt · mean(c²) = mean(c²)/3
    s = straightness(lambda x, t: 2 * t[:, None] * c, x0, steps=2000, t0=0.0)
    assert abs(s - float(c.pow(2).mean()) / 3) < 1e-3


def test_rk45_subset_evaluation_matches_full_batch() -> None:
    """rk45 evaluates only unfinished samples when the velocity supports select(); same result."""
    class M(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return _nonlinear(x, t) * (1 + cond.to(x.dtype))[:, None]

    x0 = torch.randn(6, 3, dtype=DT)
    cond = torch.tensor([0, 1, 2, 0, 3, 1])
    guided = cfg_velocity(M(), cond)
    plain = lambda x, t: M()(x, t, cond)  # noqa: E731  (no select: whole-batch path)
    a, b = rk45(guided, x0), rk45(plain, x0)
    assert torch.allclose(a.x, b.x, atol=1e-12) and torch.equal(a.sample_nfe, b.sample_nfe)
    assert int(a.sample_nfe.min()) < a.nfe  # samples finished at different times


def test_options_for_gives_each_solver_only_what_it_takes() -> None:
    from fastflow.flow.solvers import options_for

    opts = dict(rtol=1e-3, atol=1e-4, progress=None, r=0.5)
    assert options_for("rk45", **opts) == {"rtol": 1e-3, "atol": 1e-4}
    assert options_for("rk2", **opts) == {"r": 0.5}
    assert options_for("euler", **opts) == {} and options_for("one_step", **opts) == {}
    with pytest.raises(ConfigError, match="unknown solver"):
        options_for("rk4", **opts)
