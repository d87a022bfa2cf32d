"""MeanFlow: the identity on a closed form (Gaussian data), flow matching at s = t, training, sampling."""

import json

import pytest
import torch
from helpers import tiny_config

from fastflow.data import BatchStream
from fastflow.data.base import ArrayDataset, Batch
from fastflow.errors import ConfigError, ShapeError
from fastflow.flow import generate
from fastflow.models import build_model, load_model, save_model
from fastflow.objectives import build_objective
from fastflow.objectives.meanflow import MeanFlow, interval_times, meanflow_target

MU, SIGMA = torch.tensor([2.0, -1.0], dtype=torch.float64), 0.5  # data N(μ, σ² I), noise N(0, I)


def _scale(t):  # std of x_t = t·x1 + (1 − t)·z
    return torch.sqrt(t**2 * SIGMA**2 + (1 - t) ** 2)


def exact_velocity(x, t):
    """E[x1 − z | x_t = x] for Gaussian data: affine in x."""
    tt = t[:, None]
    return MU + (tt * SIGMA**2 - (1 - tt)) / _scale(tt) ** 2 * (x - tt * MU)


def exact_average(x, s, t):
    """u(x_s, s, t) = (x_t − x_s)/(t − s) along the flow x_τ = τμ + σ_τ ξ (the s = t limit: v)."""
    ss, tt = s[:, None], t[:, None]
    ratio = _scale(tt) / _scale(ss)
    gap = tt - ss
    avg = (gap * MU + (ratio - 1) * (x - ss * MU)) / gap.clamp_min(1e-300)
    return torch.where(gap > 0, avg, exact_velocity(x, s))


def test_the_jvp_target_is_the_exact_average_velocity_float64() -> None:
    g = torch.Generator().manual_seed(0)
    b = 64
    s = torch.rand(b, generator=g, dtype=torch.float64) * 0.9
    t = s + torch.rand(b, generator=g, dtype=torch.float64) * (1 - s)
    x = torch.randn(b, 2, generator=g, dtype=torch.float64) * 2
    u, target = meanflow_target(lambda x_, s_: exact_average(x_, s_, t), x, s, t, exact_velocity(x, s))
    assert torch.allclose(u, exact_average(x, s, t)) and (target - u).abs().max() < 1e-10
    # linear in v: with the straight path's conditional velocity x1 − z the target is right on average


def test_at_s_equal_t_the_loss_is_flow_matching() -> None:
    torch.manual_seed(0)
    model = build_model({"preset": "toy2d", "hidden": 32, "times": 2})
    x1 = torch.randn(32, 2)
    obj = MeanFlow(ratio=0.0, weight_p=0.0)  # every t = s, unit weight
    torch.manual_seed(5)
    loss, logs = obj(model, Batch(x1), 0)
    torch.manual_seed(5)
    z = torch.randn_like(x1)
    s, t = interval_times(obj.time, 0.0, 32, x1.device)
    assert torch.equal(s, t)
    xs = s[:, None] * x1 + (1 - s[:, None]) * z
    fm = (model(xs, s) - (x1 - z)).pow(2).sum(1).mean()  # t_end defaults to t: the instantaneous velocity
    assert torch.allclose(loss, fm, rtol=1e-5)


def _gaussian_data(n: int = 4096) -> ArrayDataset:
    g = torch.Generator().manual_seed(1)
    return ArrayDataset((MU + SIGMA * torch.randn(n, 2, generator=g, dtype=torch.float64)).float(), name="gauss")


def _train(objective, model, data, steps, lr=3e-3, batch=256) -> list[float]:
    stream, opt, mse = BatchStream(data, batch, seed=0), torch.optim.Adam(model.parameters(), lr=lr), []
    for step in range(steps):
        loss, logs = objective(model, stream.batch(step), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mse.append(float(logs["mse"]))
    return mse


def test_a_tiny_model_approaches_the_exact_average_velocity() -> None:
    torch.manual_seed(0)
    model = build_model({"preset": "toy2d", "hidden": 64, "depth": 2, "times": 2, "t_scale": 1.0})
    z = torch.randn(4000, 2)
    exact = exact_average(z.double(), torch.zeros(4000, dtype=torch.float64), torch.ones(4000, dtype=torch.float64))

    def error() -> float:  # of u(z, 0, 1), relative to the exact one
        with torch.no_grad():
            u = model(z, torch.zeros(4000), t_end=torch.ones(4000)).double()
        return float((u - exact).norm(dim=1).mean() / exact.norm(dim=1).mean())

    before = error()
    mse = _train(MeanFlow(), model, _gaussian_data(), 1200)
    assert sum(mse[-50:]) < 0.6 * sum(mse[:50])
    assert error() < min(0.15, 0.2 * before), (before, error())
    x = generate(model, z, "one_step").x  # x1 = z + u(z, 0, 1): data N(μ, 0.25 I), noise N(0, I)
    assert (x.mean(0).double() - MU).abs().max() < 0.2 and 0.3 < float(x.std(0).min()) <= float(x.std(0).max()) < 0.7


def test_loss_decreases_on_toy2d() -> None:
    from fastflow.data.toy2d import Toy2DDataset

    torch.manual_seed(0)
    model = build_model({"preset": "toy2d", "hidden": 64, "times": 2, "t_scale": 1.0})
    objective, data = build_objective({"name": "meanflow"}), Toy2DDataset(n=4096)
    held_out = Batch(Toy2DDataset(n=8192, seed=1).x)

    def error() -> float:  # the objective's error on fixed data, times and noise
        torch.manual_seed(7)
        with torch.no_grad():
            return float(objective(model, held_out, 0)[1]["mse"])

    before = error()
    _train(objective, model, data, 300)
    assert error() < 0.8 * before, (before, error())


def test_class_conditional_guidance_is_folded_into_the_target() -> None:
    torch.manual_seed(0)
    model = build_model({"preset": "toy2d", "hidden": 32, "times": 2, "num_classes": 3})
    x_s, s, v = torch.randn(6, 2), torch.rand(6), torch.randn(6, 2)
    label = torch.tensor([0, 1, 2, 3, 0, 3])  # 3 is the null label
    obj = MeanFlow(num_classes=3, cfg_scale=2.0)
    with torch.no_grad():
        v_null = model(x_s, s, torch.full((6,), 3), t_end=s)
    mixed = obj.guided_velocity(model, x_s, s, v, label)
    keep = (label != 3)[:, None]
    assert torch.allclose(mixed, torch.where(keep, 2.0 * v - v_null, v), atol=1e-6)


@pytest.mark.parametrize("kappa", [0.0, 0.5])
def test_cfg_target_ignores_dropout_and_is_the_authors_formula(kappa) -> None:
    """With dropout 0.1 in train mode, the guided velocity is the authors' ``ω·v + κ·u(·|c) + (1 − ω − κ)·u(·|∅)``
    with their ``train=False`` velocities: two computations equal, equal to a float64 reimplementation in the
    authors' time (t' = 1 − s, interval [t_start, t_end]), and every submodule left in its own mode."""
    import copy

    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "in_channels": 1, "resolution": 8, "times": 2, "num_classes": 3,
                         "dropout": 0.1}).train()
    with torch.no_grad():  # a zero-initialised output layer would make every velocity 0
        model.conv_out.weight.normal_(std=0.3)
    model.time_mlp.eval()  # a submodule in its own mode stays so
    x_s, v = torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8)
    s = torch.tensor([0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 0.9, 0.3])
    label = torch.tensor([0, 1, 2, 3, 0, 1, 3, 2])  # 3: dropped
    obj = MeanFlow(num_classes=3, cfg_scale=1.5, kappa=kappa, cfg_interval=(0.1, 0.85))
    got, again = obj.guided_velocity(model, x_s, s, v, label), obj.guided_velocity(model, x_s, s, v, label)
    assert torch.equal(got, again)
    assert model.training and not model.time_mlp.training and model.conv_in.training

    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        u = lambda y: ref(x_s.double(), s.double(), y, t_end=s.double())  # noqa: E731
        v_uncond, v_cond = u(torch.full_like(label, 3)), u(label)
    t_theirs = 1.0 - s.double()
    inside = ((t_theirs >= 1 - 0.85) & (t_theirs <= 1 - 0.1))[:, None, None, None]
    omega = torch.where(inside, 1.5, 1.0).double()
    kap = torch.where(inside, kappa, 0.0).double()
    guided = omega * v.double() + (1 - omega - kap) * v_uncond + kap * v_cond
    want = torch.where((label != 3)[:, None, None, None], guided, v.double())
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=1e-5), (got.double() - want).abs().max()
    with_dropout = model(x_s, s, torch.full_like(label, 3), t_end=s)  # train mode does draw dropout here
    assert not torch.equal(with_dropout, model(x_s, s, torch.full_like(label, 3), t_end=s))


def test_meanflow_guidance_options_are_checked() -> None:
    obj = build_objective({"name": "meanflow", "kappa": 0.5, "cfg_interval": [0.0, 0.7], "cfg_scale": 1.0})
    assert obj.kappa == 0.5 and obj.cfg_interval == (0.0, 0.7)
    for bad, match in (({"kappa": 1.0}, "kappa must be in"), ({"cfg_interval": [0.8, 0.2]}, "cfg_interval"),
                       ({"cfg_interval": [0.0]}, "cfg_interval")):
        with pytest.raises(ConfigError, match=match):
            build_objective({"name": "meanflow", **bad})


def test_two_time_models_sample_and_one_time_checkpoints_load_as_before(tmp_path) -> None:
    torch.manual_seed(0)
    two = build_model({"preset": "tiny", "in_channels": 1, "resolution": 8, "times": 2}).eval()
    z = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        one_step = generate(two, z, "one_step").x
        assert torch.allclose(one_step, z + two(z, torch.zeros(3), t_end=torch.ones(3)))
        two_steps = generate(two, z, "euler", 2).x
        half = z + 0.5 * two(z, torch.zeros(3), t_end=torch.full((3,), 0.5))
        assert torch.allclose(two_steps, half + 0.5 * two(half, torch.full((3,), 0.5), t_end=torch.ones(3)), atol=1e-6)
        assert torch.allclose(two(z, torch.full((3,), 0.3)), two(z, torch.full((3,), 0.3), t_end=torch.full((3,), 0.3)))
    with pytest.raises(ConfigError, match="guidance trained in"):
        generate(two, z, "one_step", cond=None, cfg_scale=2.0)
    one = build_model({"preset": "tiny", "in_channels": 1, "resolution": 8})
    with pytest.raises(ShapeError, match="takes one time"):
        one(z, torch.zeros(3), t_end=torch.ones(3))
    save_model(tmp_path / "old", one)
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["model"]["times"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    assert load_model(tmp_path / "old").config.times == 1  # a checkpoint from before two-time models


def test_meanflow_needs_a_two_time_model(tmp_path) -> None:
    from fastflow.train import train

    with pytest.raises(ConfigError, match="needs a model with model.times: 2"):
        train(tiny_config(tmp_path / "r", "objective={name: meanflow}", "train.steps=1"))
    run = train(tiny_config(tmp_path / "mf", "objective={name: meanflow}", "model.times=2", "train.steps=3"))
    assert load_model(run).config.times == 2


def test_a_meanflow_checkpoint_exports_to_onnx_and_validates(tmp_path) -> None:
    from helpers import run_cli

    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "in_channels": 1, "resolution": 8, "times": 2, "t_scale": 1.0})
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)  # a non-trivial u
    save_model(tmp_path / "mf", model, model, meta={"objective_config": {"name": "meanflow"}})
    r = run_cli("-m", "fastflow.cli.export", str(tmp_path / "mf"), "--format", "onnx", "-o", str(tmp_path / "g.onnx"),
                "--batch", "2", "--validate", "--device", "cpu")
    assert r.returncode == 0 and "validation passed" in r.stdout, r.stderr[-2000:]
