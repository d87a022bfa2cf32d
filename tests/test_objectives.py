"""Objectives: each formula on a tiny hand-computed case, and each one decreasing its loss."""

import math

import pytest
import torch
from helpers import fit

from fastflow.data import Batch, BatchStream
from fastflow.errors import ConfigError, DataError
from fastflow.models import build_model
from fastflow.objectives import build_objective
from fastflow.objectives.annealing import parse_schedule
from fastflow.objectives.distances import l1, l2, pseudo_huber
from fastflow.objectives.fgd import FlowGuidedDistill
from fastflow.pairs import FlowTeacher, PairDataset, generate_pairs

EPS = 1e-3


@pytest.mark.parametrize("spec,step,beta", [
    ("linear_100", 0, 1.0), ("linear_100", 25, 0.75), ("linear_100", 100, 0.0), ("linear_100", 500, 0.0),
    ("exp_100", 0, 1.0), ("exp_100", 100, math.exp(-1)), ("exp_100", 300, math.exp(-3)),
    ("cos_100", 0, 1.0), ("cos_100", 50, 0.5), ("cos_100", 25, (1 + math.cos(math.pi / 4)) / 2),
    ("cos_100", 150, 0.0), ("fixed_0.3", 7, 0.3), ("fixed_0", 9, 0.0), (0.25, 3, 0.25),
])
def test_annealing_schedules(spec, step, beta) -> None:
    assert parse_schedule(spec)(step) == pytest.approx(beta, abs=1e-12)


@pytest.mark.parametrize("bad", ["linear", "sigmoid_10", "linear_-5", "fixed_2", "cos_x"])
def test_annealing_schedule_errors(bad) -> None:
    with pytest.raises(ConfigError):
        parse_schedule(bad)


def test_distances() -> None:
    a, b = torch.zeros(2, 4), torch.tensor([[1.0, -1, 1, -1], [2.0, 0, 0, 0]])
    assert torch.allclose(l2(a, b), torch.tensor([1.0, 1.0]))
    assert torch.allclose(l1(a, b), torch.tensor([1.0, 0.5]))
    assert torch.allclose(pseudo_huber(a, b), torch.tensor([math.sqrt(4 + 0.03**2) - 0.03,
                                                           math.sqrt(4 + 0.03**2) - 0.03]))


class Recorder(torch.nn.Module):
    """v = c·x + t (per sample), recording its inputs."""

    def __init__(self, c: float = 0.5) -> None:
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(c))
        self.calls = []

    def forward(self, x, t, cond=None):
        self.calls.append((x.detach().clone(), t.detach().clone(), cond))
        return self.c * x + t.view(-1, *[1] * (x.dim() - 1))


def _batch(n: int = 4, d: int = 3) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(torch.randn(n, d, generator=g), None, torch.randn(n, d, generator=g))


def test_reflow_formula_with_annealing() -> None:
    batch = _batch()
    obj = build_objective({"name": "reflow", "anneal": "fixed_0.6"})
    m = Recorder()
    torch.manual_seed(3)
    loss, logs = obj(m, batch, step=0)
    torch.manual_seed(3)
    eps_noise = torch.randn_like(batch.z)
    t = torch.rand(4) * (1 - EPS) + EPS
    zp = 0.8 * batch.z + 0.6 * eps_noise
    xt = t[:, None] * batch.x + (1 - t[:, None]) * zp
    assert torch.allclose(m.calls[0][0], xt, atol=1e-6)
    v = 0.5 * xt + t[:, None]
    assert torch.allclose(loss, ((v - (batch.x - zp)) ** 2).mean(), atol=1e-6)
    assert float(logs["beta"]) == pytest.approx(0.6)
    # plain reflow uses the stored noise as is
    m = Recorder()
    torch.manual_seed(3)
    build_objective({"name": "reflow"})(m, batch, 0)
    torch.manual_seed(3)
    t = torch.rand(4) * (1 - EPS) + EPS
    assert torch.allclose(m.calls[0][0], t[:, None] * batch.x + (1 - t[:, None]) * batch.z, atol=1e-6)
    with pytest.raises(DataError, match="pairs"):
        build_objective({"name": "reflow"})(m, Batch(batch.x), 0)


def test_one_step_and_k_step_distillation_formula() -> None:
    batch = _batch()
    m = Recorder()
    loss, _ = build_objective({"name": "distill"})(m, batch, 0)
    x_in, t_in, _ = m.calls[0]
    assert torch.allclose(x_in, batch.z) and torch.allclose(t_in, torch.full((4,), EPS))
    pred = batch.z + (1 - EPS) * (0.5 * batch.z + EPS)
    assert torch.allclose(loss, ((pred - batch.x) ** 2).mean())
    # k = 2: inputs lie on the straight z → x1 segment at grid times eps or eps + (1-eps)/2
    m = Recorder()
    build_objective({"name": "distill", "k": 2})(m, batch, 0)
    x_in, t_in, _ = m.calls[0]
    for i in range(4):
        s = (float(t_in[i]) - EPS) / (1 - EPS)
        assert float(t_in[i]) in (pytest.approx(EPS), pytest.approx(EPS + (1 - EPS) / 2))
        assert torch.allclose(x_in[i], batch.z[i] + s * (batch.x[i] - batch.z[i]), atol=1e-6)


@pytest.mark.parametrize("strict", [False, True])
def test_fgd_guidance_target_is_two_step_teacher_prediction(strict) -> None:
    teacher = Recorder(c=-0.3)
    obj = FlowGuidedDistill(teacher=teacher, strict=strict)
    z = torch.randn(5, 3)
    v_s = torch.randn(5, 3)
    t = torch.rand(5) * 0.6 + 0.2
    target = obj.guidance_target(z, v_s, t, None)
    tt = t[:, None]
    first = (-0.3 * z + EPS) if strict else v_s  # teacher's or student's first step
    x_mid = z + tt * first
    expect = x_mid + (1 - tt) * (-0.3 * x_mid + tt)  # then one teacher Euler step to t = 1
    assert torch.allclose(target, expect, atol=1e-6)


def test_fgd_guidance_target_uses_the_cfg_guided_teacher() -> None:
    """Class-conditional FGD: v = α·v(x|c) + (1-α)·v(x|∅) with a hand-made conditional teacher."""

    class CondTeacher(torch.nn.Module):
        def forward(self, x, t, cond):  # v(x|c) = -0.3x + c, null label (−1 here) → -0.3x
            c = torch.zeros(len(x)) if cond is None else cond.float().clamp(min=0)
            return -0.3 * x + c[:, None]

        def null_cond(self, cond):
            return torch.full_like(cond, -1)

    alpha = 1.5
    obj = FlowGuidedDistill(teacher=CondTeacher(), cfg_scale=alpha, num_classes=10)
    z, v_s, t, c = torch.randn(5, 3), torch.randn(5, 3), torch.rand(5) * 0.6 + 0.2, torch.arange(1, 6)
    target = obj.guidance_target(z, v_s, t, c)
    tt, cc = t[:, None], c[:, None].float()
    x_mid = z + tt * v_s
    expect = x_mid + (1 - tt) * (-0.3 * x_mid + alpha * cc)
    assert torch.allclose(target, expect, atol=1e-6)


def test_fgd_loss_combines_distill_and_guide() -> None:
    batch = _batch()
    obj = FlowGuidedDistill(teacher=Recorder(c=-0.3), lam=0.5)
    student = Recorder(c=0.2)
    torch.manual_seed(11)
    loss, logs = obj(student, batch, 0)
    assert float(loss.detach()) == pytest.approx(float(logs["distill"]) + 0.5 * float(logs["guide"]), rel=1e-6)
    torch.manual_seed(11)
    zf = torch.randn_like(batch.z)
    t = torch.rand(4) * 0.6 + 0.2
    v_s = 0.2 * zf + EPS
    tt = t[:, None]
    x_mid = zf + tt * v_s
    target = x_mid + (1 - tt) * (-0.3 * x_mid + tt)
    assert float(logs["guide"]) == pytest.approx(float(((zf + v_s - target) ** 2).mean()), rel=1e-5)


@pytest.fixture(scope="module")
def toy_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    torch.manual_seed(0)
    teacher = build_model({"preset": "toy2d", "hidden": 32}).eval()
    for p in teacher.parameters():
        torch.nn.init.normal_(p, std=0.3)
    generate_pairs(FlowTeacher(teacher, solver="euler", steps=8), root, n=512, sample_shape=(2,),
                   shard_size=256, progress=False)
    from fastflow.models import save_model

    return PairDataset(str(root)), str(save_model(tmp_path_factory.mktemp("teacher"), teacher))


@pytest.mark.parametrize("spec", [{"name": "reflow"}, {"name": "reflow", "anneal": "linear_100"},
                                  {"name": "distill"}, {"name": "distill", "k": 2},
                                  {"name": "fgd"}, {"name": "fgd", "strict": True, "distance": "pseudo_huber"}])
def test_objectives_decrease_their_loss(toy_pairs, spec) -> None:
    """Each case is built from its config as a user's would be (FGD's teacher from its checkpoint), and
    computes with what its id names (the objective's settings say so) before it trains."""
    from fastflow.objectives.base import objective_settings

    data, teacher = toy_pairs
    torch.manual_seed(0)
    obj = build_objective({**spec, "teacher": teacher} if spec["name"] == "fgd" else spec)
    settings = objective_settings(obj)
    assert settings["distance"] == spec.get("distance", "l2") and settings.get("strict", False) == spec.get(
        "strict", False
    )
    losses = fit(obj, build_model({"preset": "toy2d", "hidden": 64}), BatchStream(data, 128), 200)
    assert sum(losses[-20:]) < 0.6 * sum(losses[:20]), (losses[:3], losses[-3:])


def test_build_objective_errors() -> None:
    with pytest.raises(ConfigError, match="unknown objective"):
        build_objective({"name": "gan"})
    with pytest.raises(ConfigError, match="no option"):
        build_objective({"name": "distill", "anneal": "linear_5"})
    with pytest.raises(ConfigError, match="teacher"):
        build_objective({"name": "fgd"})
    with pytest.raises(ConfigError, match="distance"):
        build_objective({"name": "rf", "distance": "l3"})


def test_lpips_needs_package_and_local_backbone(monkeypatch) -> None:
    from fastflow.errors import CheckpointError, FastflowError
    from fastflow.objectives.lpips_distance import ENV

    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises((FastflowError, CheckpointError), match="lpips package|backbone weights not found"):
        build_objective({"name": "distill", "distance": "lpips"})


def test_lpips_path_with_random_backbone() -> None:
    pytest.importorskip("torchvision", reason="lpips needs torchvision (no CPU wheel on this machine)")
    pytest.importorskip("lpips", reason="the lpips extra is not installed")
    from fastflow.objectives.lpips_distance import LPIPSDistance

    d = LPIPSDistance(net="alex", backbone="random")
    a = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.allclose(d(a, a), torch.zeros(2), atol=1e-6)
    assert (d(a, -a) > 0).all()
    batch = Batch(a, None, torch.randn_like(a))
    obj = build_objective({"name": "distill"})
    obj.distance = d
    model = build_model({"preset": "tiny", "in_channels": 1, "resolution": 32})
    loss, _ = obj(model, batch, 0)
    loss.backward()
    assert all(p.grad is not None for p in model.conv_out.parameters())


def test_every_objective_declares_its_preview_steps(tmp_path) -> None:
    """Training previews sample as the trained model is meant to: one-step students at one step, k-step
    distillation at k, flows at ``train.sample_steps`` (None); the grid carries its solver as a caption."""
    from PIL import Image

    from fastflow.objectives import OPTIONS
    from fastflow.utils.images import save_samples

    want = {"rf": None, "reflow": None, "sr": None, "distill": 2, "meanflow": 1}
    for name in OPTIONS:
        if name in want:
            spec = {"name": name, **({"k": 2} if name == "distill" else {})}
            assert build_objective(spec).preview_steps == want[name], name
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    plain, captioned = save_samples(x, tmp_path / "a.png"), save_samples(x, tmp_path / "b.png", title="Euler 1")
    assert Image.open(captioned).size[1] == Image.open(plain).size[1] + 16
