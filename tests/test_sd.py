"""The diffusers (Stable-Diffusion-style) adapter: conversion to fastflow's convention on cases with
known answers, CFG, prompt tables, and the CLI path pairs → 2-RF student → samples.
Tiny UNet / VAE / CLIP text encoder / tokenizer are built from configs; nothing is downloaded."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
import torch

pytest.importorskip("diffusers", reason="the SD adapter needs the 'diffusers' extra: pip install 'fastflow[diffusers]'")
pytest.importorskip("transformers", reason="the SD adapter needs transformers (the 'diffusers' extra)")

from diffusers import DDIMScheduler  # noqa: E402

from fastflow.cli.main import main  # noqa: E402
from fastflow.errors import ConfigError, ShapeError  # noqa: E402
from fastflow.flow.guidance import cfg_velocity  # noqa: E402
from fastflow.models.prompts import load_prompt_table, write_prompt_table  # noqa: E402
from fastflow.models.schedules import VPSchedule  # noqa: E402
from fastflow.models.sd import SDConfig, SDVelocity  # noqa: E402
from tests.helpers import tiny_diffusers_unet, tiny_sd_folder  # noqa: E402

D = 32  # text embedding width of the tiny models


def _scheduler(prediction: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=True, steps_offset=1, prediction_type=prediction)


def _unet() -> torch.nn.Module:
    return tiny_diffusers_unet(D).eval()


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return tiny_sd_folder(tmp_path_factory.mktemp("tiny-sd"))


def test_vp_schedule_time_map_is_consistent() -> None:
    sched = VPSchedule(_scheduler().alphas_cumprod)
    for k in (0, 1, 250, 640.5, 999):
        t = sched.t_of_timestep(k)
        assert float(sched.timestep(torch.tensor([t], dtype=torch.float64))) == pytest.approx(k, abs=1e-6)
    t = torch.rand(64, dtype=torch.float64) * (sched.t_max - sched.t_min) + sched.t_min
    a, s = sched.alpha_sigma(t)
    assert torch.allclose(a / (a + s), t) and torch.allclose(a ** 2 + s ** 2, torch.ones_like(t))
    ac = _scheduler().alphas_cumprod.double()  # at integer timesteps α² is ᾱ_k exactly
    for k in (3, 500, 998):
        a, _ = sched.alpha_sigma(torch.tensor([sched.t_of_timestep(k)], dtype=torch.float64))
        assert float(a ** 2) == pytest.approx(float(ac[k]), rel=1e-9)


class _GaussianOracle(torch.nn.Module):
    """The exact VP predictor for data x1 ~ N(μ, s²) per coordinate, at integer timesteps only."""

    def __init__(self, alphas_cumprod: torch.Tensor, mu: torch.Tensor, s: float, prediction: str) -> None:
        super().__init__()
        self.ac, self.mu, self.s, self.prediction = alphas_cumprod.double(), mu.double(), s, prediction
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"in_channels": 4, "sample_size": 4})()

    def forward(self, x, k, emb):
        assert torch.allclose(k, k.round(), atol=1e-4), "the oracle only knows integer timesteps"
        ab = self.ac[k.round().long()].view(-1, 1, 1, 1)
        a, sg, x = ab.sqrt(), (1 - ab).sqrt(), x.double()
        eps = sg * (x - a * self.mu) / (a ** 2 * self.s ** 2 + sg ** 2)  # E[ε | x_k]
        x1 = (x - sg * eps) / a
        out = {"epsilon": eps, "v_prediction": a * eps - sg * x1, "sample": x1}[self.prediction]
        return type("O", (), {"sample": out.float()})()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_vp_teacher_gives_the_exact_rectified_flow_velocity_of_gaussian_data(prediction) -> None:
    """Known answer: for x1 ~ N(μ, s²), E[x1 − z | y_t] of our path in closed form."""
    ac = _scheduler().alphas_cumprod
    mu, s = torch.randn(1, 4, 4, 4), 0.5
    sched = VPSchedule(ac)
    model = SDVelocity(SDConfig(path="-", prediction=prediction), unet=_GaussianOracle(ac, mu, s, prediction),
                       schedule=sched, table=torch.zeros(2, 3, D), backbone="UNet2DConditionModel")
    for k in (10, 300, 700, 990):
        t = torch.full((6,), sched.t_of_timestep(k))
        y = torch.randn(6, 4, 4, 4)
        tt, m = t.double().view(-1, 1, 1, 1), mu.double()
        den = tt ** 2 * s ** 2 + (1 - tt) ** 2
        e_x1 = m + tt * s ** 2 * (y.double() - tt * m) / den
        e_z = (1 - tt) * (y.double() - tt * m) / den
        v = model(y, t, torch.zeros(6, dtype=torch.long))
        assert torch.allclose(v.double(), e_x1 - e_z, atol=1e-4, rtol=1e-4), (prediction, k)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_euler_on_ddim_grid_with_cfg_is_ddim(prediction) -> None:
    """Known answer: Euler in fastflow's convention on a DDIM scheduler's own grid, with CFG α = 3,
    reproduces diffusers' DDIM sampler (ε-space CFG) on a random tiny UNet."""
    unet, sched = _unet(), _scheduler(prediction)
    torch.manual_seed(3)
    table = torch.randn(4, 5, D)  # 3 prompts + null
    model = SDVelocity(SDConfig(path="-", prediction=prediction), unet=unet,
                       schedule=VPSchedule(sched.alphas_cumprod), table=table)
    labels, alpha = torch.tensor([0, 2]), 3.0
    x = torch.randn(2, 4, 8, 8)
    sched.set_timesteps(8)
    ref = x.clone()
    with torch.no_grad():
        for k in sched.timesteps:
            out_c, out_u = unet(torch.cat([ref, ref]), k, torch.cat([table[labels], table[[3, 3]]])).sample.chunk(2)
            ref = sched.step(out_u + alpha * (out_c - out_u), k, ref, eta=0.0).prev_sample
        ks = [float(k) for k in sched.timesteps]
        grid = [model.schedule.t_of_timestep(k) for k in ks] + [1.0]
        a, s = model.schedule.alpha_sigma(torch.tensor([grid[0]], dtype=torch.float64))
        y = x / float(a + s)
        v = cfg_velocity(model, labels, alpha)
        for t0, t1 in pairwise(grid):
            y = y + (t1 - t0) * v(y, torch.full((2,), t0))
    assert torch.allclose(y, ref, atol=1e-4, rtol=1e-4), (y - ref).abs().max()


def test_velocity_parametrisation_and_condition_forms() -> None:
    """InstaFlow students: the UNet's output is v at timestep 1000·(1 − t); embeddings, prompt
    indices and {"tokens": …} are the same condition; bad conditions raise typed errors."""
    unet = _unet()
    torch.manual_seed(4)
    table = torch.randn(3, 5, D)
    model = SDVelocity(SDConfig(path="-", prediction="velocity"), unet=unet, table=table)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.25, 0.9])
    with torch.no_grad():
        expect = unet(x, 1000 * (1 - t), table[[1, 0]]).sample
        assert torch.allclose(model(x, t, torch.tensor([1, 0])), expect, atol=1e-6)
        assert torch.allclose(model(x, t, table[[1, 0]]), expect, atol=1e-6)
        assert torch.allclose(model(x, t, {"tokens": table[[1, 0]]}), expect, atol=1e-6)
        assert torch.allclose(model(x, t, None), unet(x, 1000 * (1 - t), table[[2, 2]]).sample, atol=1e-6)
    assert model.config.num_classes == 2 and torch.equal(model.null_cond(torch.tensor([0, 1])), torch.tensor([2, 2]))
    for bad in ([0, 5], [0, -1]):  # past the null row, or negative: never a silent lookup
        with pytest.raises(ShapeError):
            model(x, t, torch.tensor(bad))
    with pytest.raises(ShapeError):
        model(torch.randn(2, 3, 8, 8), t, None)
    with pytest.raises(ConfigError, match="prediction"):
        SDVelocity(SDConfig(path="-", prediction="eps"), unet=unet, table=table)


def test_load_from_a_local_directory_and_prompt_table(sd_dir, tmp_path) -> None:
    table_path = write_prompt_table(sd_dir, ["a cat", "a dog", ""], tmp_path / "p.safetensors")
    emb, prompts = load_prompt_table(table_path)
    assert prompts == ["a cat", "a dog"] and emb.shape == (3, 16, D)
    assert not torch.allclose(emb[0], emb[1])
    given = SDConfig(path=str(sd_dir), prompts=str(table_path))
    model = SDVelocity(given)
    assert model.config.prediction == "epsilon" and model.config.num_classes == 2 and model.config.resolution == 8
    assert given == SDConfig(path=str(sd_dir), prompts=str(table_path))  # the caller's config is left as it was
    with torch.no_grad():
        img = model.decode(torch.randn(2, 4, 8, 8))
    assert img.shape == (2, 3, 8, 8) and img.abs().max() <= 1
    with pytest.raises(ConfigError, match="not found at .*missing unet/ or transformer/"):
        SDVelocity(SDConfig(path=str(tmp_path / "nowhere")))
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a readable prompt table"):
        load_prompt_table(tmp_path / "bad.safetensors")


def test_cli_sd_pairs_to_2rf_student_to_samples(sd_dir, tmp_path, capsys) -> None:
    """The README's InstaFlow recipe at toy size: prompts → CFG pairs from the SD teacher → a 2-RF
    student (the SD UNet fine-tuned with the velocity parametrisation) → decoded samples."""
    (tmp_path / "prompts.txt").write_text("a cat\na red dog\n")
    table = tmp_path / "prompts.safetensors"
    assert main(["prompts", str(sd_dir), str(tmp_path / "prompts.txt"), "--out", str(table)]) == 0
    pairs = tmp_path / "pairs"
    assert main(["pairs", "--sd", str(sd_dir), "--prompts", str(table), "--cfg", "3", "--solver", "euler",
                 "--steps", "4", "--count", "6", "--shard-size", "3", "--out", str(pairs), "--quiet"]) == 0
    manifest = json.loads((pairs / "manifest.json").read_text())
    assert manifest["count"] == 6 and manifest["settings"]["num_classes"] == 2
    assert manifest["settings"]["teacher"]["cfg_scale"] == 3.0
    run = tmp_path / "2rf"
    (tmp_path / "2rf.yaml").write_text(
        f"model: {{arch: sd, path: '{sd_dir}', prediction: velocity, prompts: '{table}'}}\n"
        f"data: {{name: pairs, root: '{pairs}'}}\nobjective: {{name: reflow, cond_drop: 0.1}}\n")
    assert main(["train", str(tmp_path / "2rf.yaml"), f"out_dir={run}", "train.steps=2", "train.batch_size=3",
                 "train.ckpt_every=2", "train.sample_every=0", "train.progress=false", "train.tensorboard=false",
                 "optim.lr=1e-5"]) == 0
    assert main(["sample", str(run), "--label", "1", "--cfg", "1.5", "--steps", "2", "--n", "2",
                 "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "s.png").is_file()
    from safetensors.torch import save_file

    save_file({"embedding": load_prompt_table(table)[0][0].contiguous()}, str(tmp_path / "emb.safetensors"))
    assert main(["sample", str(run), "--prompt-emb", str(tmp_path / "emb.safetensors"), "--cfg", "2", "--steps", "2",
                 "--n", "2", "--out", str(tmp_path / "e.npz"), "--device", "cpu"]) == 0
    import numpy as np

    assert np.load(tmp_path / "e.npz")["x"].shape == (2, 4, 8, 8)  # .npz keeps the latents
    assert main(["pairs", "--sd", str(tmp_path / "missing"), "--prompts", str(table), "--count", "2",
                 "--out", str(tmp_path / "p2")]) == 2
    assert "diffusers weights not found" in capsys.readouterr().err


def test_tiny_sd_command_makes_the_sd_path_runnable(tmp_path) -> None:
    """``fastflow tiny-sd DIR`` writes the folder the tests use (``fastflow/configs/sd-tiny``); prompts and
    teacher pairs run on it; an existing non-empty target is one line, exit 2."""
    from fastflow.cli.main import main

    sd = tmp_path / "sd"
    assert main(["tiny-sd", str(sd)]) == 0
    assert {p.name for p in sd.iterdir()} >= {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    (tmp_path / "p.txt").write_text("a cat\na red dog\n")
    assert main(["prompts", str(sd), str(tmp_path / "p.txt"), "--out", str(tmp_path / "t.safetensors")]) == 0
    assert main(["pairs", "--sd", str(sd), "--prompts", str(tmp_path / "t.safetensors"), "--solver", "euler",
                 "--steps", "2", "--count", "2", "--out", str(tmp_path / "pairs"), "--quiet"]) == 0
    assert main(["tiny-sd", str(sd)]) == 2
