"""OFTSR groundwork: degradation, SR datasets, the SR teacher objective and the OFTSR
distillation losses on hand-computed cases."""

import math
from itertools import pairwise

import pytest
import torch
from helpers import fit

from fastflow.data import Batch, BatchStream, build_dataset
from fastflow.data.sr import degrade
from fastflow.errors import ConfigError, DataError
from fastflow.flow.sr import sr_start
from fastflow.models import build_model
from fastflow.objectives import build_objective
from fastflow.objectives.oftsr import OFTSRDistill, SRFlow


def test_degradation() -> None:
    x = torch.full((2, 3, 16, 16), 0.3)
    for mode in ("bicubic", "avgpool"):
        assert torch.allclose(degrade(x, 4, 0.0, mode), x, atol=1e-5)  # constants survive
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    lq = degrade(x, 4)
    assert lq.shape == x.shape and not torch.allclose(lq, x, atol=1e-2)
    pooled = torch.nn.functional.avg_pool2d(x, 4)
    assert torch.allclose(torch.nn.functional.avg_pool2d(
        torch.nn.functional.interpolate(pooled, scale_factor=4, mode="nearest"), 4), pooled)
    noisy = degrade(x, 4, 0.1, generator=torch.Generator().manual_seed(0))
    assert 0.02 < float((noisy - lq).std()) < 0.2
    with pytest.raises(DataError):
        degrade(torch.rand(1, 1, 10, 10), 4)
    with pytest.raises(ConfigError):
        degrade(x, 4, mode="lanczos")


def test_sr_dataset_from_digits() -> None:
    d = build_dataset({"name": "sr", "source": "digits", "scale": 2, "sigma_y": 0.05})
    b = d.get(torch.tensor([3, 7]))
    assert b.x.shape == b.image.shape == (2, 1, 16, 16)
    again = d.get(torch.tensor([7]))
    assert torch.equal(again.image[0], b.image[1])  # per-sample noise is fixed by (seed, index)


def test_sr_teacher_formula() -> None:
    hr, lq = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    seen = {}

    def model(x, t, cond):
        seen.update(x=x, t=t, cond=cond)
        return torch.zeros_like(x)

    obj = SRFlow(sigma_p=0.2)
    torch.manual_seed(0)
    loss, _ = obj(model, Batch(hr, image=lq), 0)
    torch.manual_seed(0)
    x0 = math.sqrt(1 - 0.04) * lq + 0.2 * torch.randn_like(lq)
    t = torch.rand(4) * (1 - 1e-3) + 1e-3
    xt = t[:, None, None, None] * hr + (1 - t[:, None, None, None]) * x0
    assert torch.allclose(seen["x"], xt, atol=1e-6) and torch.equal(seen["cond"]["image"], lq)
    assert torch.allclose(loss, ((hr - x0) ** 2).mean(), atol=1e-6)
    with pytest.raises(DataError, match="data.name=sr"):
        obj(model, Batch(hr), 0)


class Affine(torch.nn.Module):
    """v(x, t | lq) = a·x + b·t + c·lq: every OFTSR target has a closed form."""

    def __init__(self, a, b, c):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Parameter(torch.tensor(float(v))) for v in (a, b, c))

    def forward(self, x, t, cond):
        return self.a * x + self.b * t.view(-1, 1, 1, 1) + self.c * cond["image"]


def test_oftsr_losses_by_hand() -> None:
    teacher, student = Affine(-0.5, 0.3, 0.2), Affine(0.1, -0.2, 0.4)
    obj = OFTSRDistill(teacher=teacher, sigma_p=0.1)
    hr, lq = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    torch.manual_seed(5)
    loss, logs = obj(student, Batch(hr, image=lq), 0)
    torch.manual_seed(5)
    x0 = sr_start(lq, 0.1)
    t = (torch.rand(3) * (0.99 - 0.05 - 0.01) + 0.01).view(-1, 1, 1, 1)
    v = lambda m, x, tt: m.a * x + m.b * tt + m.c * lq  # noqa: E731
    with torch.no_grad():
        u_t = v(student, x0, t)
        x_t = x0 + t * u_t
        k1 = v(teacher, x_t, t)
        k2 = v(teacher, x_t + 0.025 * k1, t + 0.025)
        target_next = (x_t + 0.05 * k2 - x0) / (t + 0.05)
        distill = ((v(student, x0, t + 0.05) - target_next) ** 2).mean()
        boundary = ((v(student, x0, torch.full_like(t, 0.01)) - v(teacher, x0, torch.full_like(t, 0.01))) ** 2).mean()
        align = ((x0 + u_t - (x_t + (1 - t) * v(teacher, x_t, t))) ** 2).mean()
    assert float(logs["distill"]) == pytest.approx(float(distill), rel=1e-5)
    assert float(logs["boundary"]) == pytest.approx(float(boundary), rel=1e-5)
    assert float(logs["align"]) == pytest.approx(float(align), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(distill + 0.1 * boundary + 0.01 * align), rel=1e-5)
    loss.backward()
    assert teacher.a.grad is None and student.a.grad is not None


@pytest.mark.parametrize("name", ["sr", "oftsr"])
def test_sr_objectives_decrease_their_loss(name) -> None:
    data = build_dataset({"name": "sr", "source": "digits", "scale": 2})
    torch.manual_seed(0)
    spec = dict(preset="tiny", in_channels=1, cond_channels=1, resolution=16)
    model = build_model(spec)
    if name == "sr":
        obj = build_objective({"name": "sr"})
    else:
        teacher = build_model(spec).eval()
        for p in teacher.parameters():
            torch.nn.init.normal_(p, std=0.05)
        obj = OFTSRDistill(teacher=teacher.requires_grad_(False))
    losses = fit(obj, model, BatchStream(data, 32), 80)
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10]), (losses[:3], losses[-3:])


def test_sr_metrics() -> None:
    from fastflow.metrics.sr import hf_energy_ratio, psnr, ssim

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    noisy = ref + 0.1 * torch.randn(ref.shape, generator=g)
    mse = (noisy - ref).pow(2).flatten(1).mean(1).double()
    assert torch.allclose(psnr(noisy, ref), 10 * torch.log10(4 / mse))
    assert torch.allclose(ssim(ref, ref), torch.ones(2, dtype=torch.float64))
    assert (ssim(noisy, ref) < 1).all() and (
        ssim(ref + 0.3 * torch.randn(ref.shape, generator=g), ref) < ssim(noisy, ref)
    ).all()
    blurred = torch.nn.functional.avg_pool2d(ref, 3, 1, 1)
    assert hf_energy_ratio(blurred, ref) < 0.5 and hf_energy_ratio(ref, ref) == pytest.approx(1.0)
    # SSIM of a constant shift c (no structure change) is the luminance term alone
    c = 0.2
    shifted = ref + c
    s = ssim(shifted, ref)
    assert (s < 1).all() and (s > 0.9).all()


def test_sr_teacher_and_oftsr_student_train_through_the_loop(tmp_path) -> None:
    from fastflow.train import load_config, train
    from fastflow.train.state import latest_checkpoint

    common = ["model.arch=unet", "model.in_channels=1", "model.cond_channels=1", "model.resolution=16",
              "model.channels=8", "model.ch_mult=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[8]",
              "data={name: sr, source: digits, scale: 2}", "train.batch_size=8", "train.progress=false",
              "train.tensorboard=false", "train.sample_n=4", "train.sample_steps=2", "train.steps=3"]
    teacher = train(
        load_config(None, [*common, f"out_dir={tmp_path / 'teacher'}", "objective={name: sr, sigma_p: 0.1}"])
    )
    assert (teacher / "samples" / "step-00000003.png").is_file()
    student = train(load_config(None, [*common, f"out_dir={tmp_path / 'student'}",
                                       f"objective={{name: oftsr, teacher: '{teacher}'}}"]))
    assert latest_checkpoint(student).name == "step-00000003"
    from fastflow.objectives.oftsr import OFTSRDistill  # the student is previewed at its one-step map

    assert (student / "samples" / "step-00000003.png").is_file() and OFTSRDistill.preview_steps == 1


def test_sr_cli_and_tau_sweep_eval(tmp_path) -> None:
    import json

    import numpy as np
    from helpers import run_cli

    from fastflow.train import load_config, train

    common = ["model.arch=unet", "model.in_channels=1", "model.cond_channels=1", "model.resolution=16",
              "model.channels=8", "model.ch_mult=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[8]",
              "data={name: sr, source: digits, scale: 2}", "train.batch_size=8", "train.progress=false",
              "train.tensorboard=false", "train.steps=2"]
    teacher = train(load_config(None, [*common, f"out_dir={tmp_path / 't'}", "objective={name: sr}"]))
    student = train(load_config(None, [*common, f"out_dir={tmp_path / 's'}",
                                       f"objective={{name: oftsr, teacher: '{teacher}'}}"]))
    np.savez(tmp_path / "lr.npz", x=np.random.rand(3, 1, 8, 8).astype(np.float32) * 2 - 1)
    res = run_cli("sr", str(student), "--input", str(tmp_path / "lr.npz"), "--tau", "0.3", "--out",
                  str(tmp_path / "sr.png"), "--grid", str(tmp_path / "grid.png"))
    assert res.returncode == 0 and "NFE=1" in res.stdout, res.stderr
    from PIL import Image

    for i in range(3):  # one PNG per input at the model's resolution (8×8 ×2 → 16×16), plus the display grid
        assert Image.open(tmp_path / f"sr-{i:03d}.png").size == (16, 16)
    assert Image.open(tmp_path / "grid.png").size[0] > 16
    res = run_cli("sr", str(student), "--input", str(tmp_path / "lr.npz"), "--tau", "0.3", "--out",
                  str(tmp_path / "sr.npz"))
    x = np.load(tmp_path / "sr.npz")["x"]
    assert res.returncode == 0 and x.shape == (3, 1, 16, 16)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sr-001.png")),
                          ((np.clip(x[1, 0], -1, 1) + 1) * 127.5).round().astype(np.uint8))
    res = run_cli("sr", str(teacher), "--input", str(tmp_path / "lr.npz"))
    assert res.returncode == 2 and "not an OFTSR student" in res.stderr
    res = run_cli("eval", str(student), "--n", "16", "--taus", "0.1,0.9", "--json", str(tmp_path / "e.json"))
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert [r["tau"] for r in rows] == [None, 0.1, 0.9, None] and all("psnr" in r for r in rows)
    assert (tmp_path / "e.png").is_file() and (tmp_path / "e-samples.png").is_file()
    from PIL import Image

    strip = Image.open(tmp_path / "e-samples.png")  # rows lq, tau=0.1, tau=0.9, teacher, hr, labelled on the left
    assert strip.size[1] == 5 * (16 + 1) * 4 + 4 and strip.size[0] > 8 * 17 * 4 + 4


@pytest.mark.slow  # ~4.5 min on 2 cores: make test-all
def test_oftsr_tau_trades_fidelity_for_realism_on_digits_x4(tmp_path) -> None:
    """Small budget (~2 min on 2 cores): digits ×4, teacher 500 steps, student 400 steps from it.
    PSNR falls and the high-frequency energy (realism proxy) rises monotonically with τ, and the
    one-step student at τ ≈ 1 lands on the teacher's 32-step result."""
    from fastflow.metrics.sr_eval import tau_sweep
    from fastflow.models import load_model
    from fastflow.train import load_config, train

    common = ["model.preset=digits-small", "model.cond_channels=1", "data={name: sr, source: digits, scale: 4}",
              "train.batch_size=64", "train.progress=false", "train.tensorboard=false", "optim.lr=2e-3",
              "optim.warmup=50", "train.ema_rate=0.999", "train.sample_every=0"]
    teacher = train(load_config(None, [*common, f"out_dir={tmp_path / 't'}", "objective={name: sr, sigma_p: 0.1}",
                                       "train.steps=500"]))
    student = train(load_config(None, [*common, f"out_dir={tmp_path / 's'}", "train.steps=400",
                                       f"objective={{name: oftsr, teacher: '{teacher}'}}",
                                       f"train.init_from={teacher}"]))
    b = build_dataset({"name": "sr", "source": "digits", "scale": 4}).get(torch.arange(500))
    rows, _ = tau_sweep(load_model(student), b.x, b.image, 0.1, (0.01, 0.25, 0.5, 0.75, 0.99),
                        teacher=load_model(teacher))
    sweep = [r for r in rows if r["tau"] is not None]
    lq, teach = rows[0], rows[-1]
    psnrs, hf = [r["psnr"] for r in sweep], [r["hf_ratio"] for r in sweep]
    assert all(a > b for a, b in pairwise(psnrs)), psnrs
    assert all(a < b for a, b in pairwise(hf)), hf
    assert min(psnrs) > lq["psnr"] + 5  # far better than the bicubic input
    assert abs(psnrs[-1] - teach["psnr"]) < 0.5 and abs(hf[-1] - teach["hf_ratio"]) < 0.05


def test_tau_sweep_adds_the_perceptual_column() -> None:
    """The ``lpips`` hook (the demo passes LPIPSDistance when FASTFLOW_LPIPS_BACKBONE is set): every
    row gets the mean of the given per-image distance between its samples and the ground truth."""
    from fastflow.metrics.sr_eval import tau_sweep

    torch.manual_seed(0)
    model = build_model({"preset": "digits-small", "cond_channels": 1}).eval()
    b = build_dataset({"name": "sr", "source": "digits", "scale": 4}).get(torch.arange(8))
    calls = []

    def dist(x: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return (x - hr).abs().flatten(1).mean(1)

    rows, samples = tau_sweep(model, b.x, b.image, 0.1, (0.01, 0.99), teacher=model, teacher_steps=2, lpips=dist)
    keys = ["lq", "tau=0.01", "tau=0.99", "teacher"]
    assert [r["lpips"] for r in rows] == pytest.approx([float((samples[k] - b.x).abs().mean()) for k in keys])
    assert calls == [8] * 4
    plain, _ = tau_sweep(model, b.x, b.image, 0.1, (0.01, 0.99))
    assert all("lpips" not in r for r in plain)
