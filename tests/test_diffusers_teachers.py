"""Teachers from any local diffusers folder (``models.sd``): a DDPM-style ``UNet2DModel`` (pixel
space, single-model folder layout) and a flow-matching transformer (SANA-style, with
``FlowMatchEulerDiscreteScheduler``). The time convention is checked against each scheduler's own
deterministic step; each teacher generates pairs and trains a student for a few steps through the CLI.
Tiny random configs; nothing is downloaded."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers teachers need the 'diffusers' extra")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    SanaTransformer2DModel,
    UNet2DModel,
)
from safetensors.torch import save_file  # noqa: E402

from fastflow.errors import ConfigError, ShapeError  # noqa: E402
from fastflow.models.sd import SDConfig, SDVelocity  # noqa: E402

D = 8  # caption width of the tiny transformer


def _pixel_unet(classes: int | None = None) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
        num_class_embeds=classes,
    ).eval()


def _transformer() -> SanaTransformer2DModel:
    torch.manual_seed(1)
    return SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=4,
                                  num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=4,
                                  cross_attention_dim=8, caption_channels=D, sample_size=8).eval()


@pytest.fixture(scope="module")
def ddpm_dir(tmp_path_factory):
    """A DDPM CIFAR-10-style single-model folder: config.json + weights + scheduler_config.json at its root."""
    root = tmp_path_factory.mktemp("ddpm")
    _pixel_unet().save_pretrained(root)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    """A SANA-style pipeline folder (transformer/, scheduler/, vae/) and a prompt table of 2 prompts."""
    root = tmp_path_factory.mktemp("flow")
    _transformer().save_pretrained(root / "transformer")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(root / "scheduler")
    torch.manual_seed(3)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                  up_block_types=("UpDecoderBlock2D",), block_out_channels=(16,), latent_channels=4,
                  norm_num_groups=8, sample_size=8).save_pretrained(root / "vae")
    g = torch.Generator().manual_seed(2)
    save_file({"embeddings": torch.randn(2, 5, D, generator=g), "null": torch.randn(1, 5, D, generator=g)},
              str(root / "prompts.safetensors"))
    return root


def _euler(model, x, grid, cond):
    with torch.no_grad():
        for t0, t1 in pairwise(grid):
            x = x + (t1 - t0) * model(x, torch.full((len(x),), t0), cond)
    return x


def test_ddpm_unet_folder_is_a_vp_teacher_and_euler_on_its_grid_is_ddim(ddpm_dir) -> None:
    model = SDVelocity(SDConfig(path=str(ddpm_dir)))
    assert (model.config.prediction, model.config.in_channels, model.config.resolution) == ("epsilon", 3, 8)
    assert model.config.num_classes == 0 and model.table is None
    # its deterministic step; DDPM's clip_sample (x̂1 clipped to [−1, 1]) is a sampler heuristic, not the ODE
    ddim = DDIMScheduler.from_config(DDPMScheduler.from_pretrained(ddpm_dir).config, clip_sample=False)
    ddim.set_timesteps(6)
    x = torch.randn(2, 3, 8, 8)
    ref = x.clone()
    with torch.no_grad():
        for k in ddim.timesteps:
            ref = ddim.step(model.unet(ref, k).sample, k, ref, eta=0.0).prev_sample
    grid = [model.schedule.t_of_timestep(float(k)) for k in ddim.timesteps] + [1.0]
    a, s = model.schedule.alpha_sigma(torch.tensor([grid[0]], dtype=torch.float64))
    y = _euler(model, x / float(a + s), grid, None)
    assert torch.allclose(y, ref, atol=1e-4, rtol=1e-4), (y - ref).abs().max()
    img = model.decode(y)  # pixel space: no VAE
    assert torch.equal(img, y.clamp(-1, 1))
    with pytest.raises(ConfigError, match="unconditional"):
        model(x, torch.full((2,), 0.5), torch.tensor([0, 1]))


def test_class_conditional_unet2d_takes_labels_and_refuses_cfg() -> None:
    unet = _pixel_unet(classes=3)
    model = SDVelocity(SDConfig(path="-", prediction="velocity"), unet=unet)
    assert model.config.num_classes == 3
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([0.2, 0.7]), torch.tensor([2, 0])
    with torch.no_grad():
        assert torch.allclose(model(x, t, y), unet(x, 1000 * (1 - t), class_labels=y).sample, atol=1e-6)
    for bad in (torch.tensor([0, 3]), torch.tensor([-1, 0]), torch.tensor([0.5, 1.0]), None):
        with pytest.raises(ShapeError):
            model(x, t, bad)
    with pytest.raises(ConfigError, match="null class"):
        model.null_cond(y)
    with pytest.raises(ConfigError, match="takes no text"):
        SDVelocity(SDConfig(path="-", prediction="velocity"), unet=unet, table=torch.zeros(2, 3, 4))


def test_flow_matching_transformer_is_already_a_rectified_flow(flow_dir) -> None:
    """Euler in fastflow's time on the scheduler's own (shifted) sigma grid equals its Euler steps."""
    model = SDVelocity(SDConfig(path=str(flow_dir), prompts=str(flow_dir / "prompts.safetensors")))
    assert model.config.prediction == "flow" and model.schedule is None and model.config.num_classes == 2
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(flow_dir / "scheduler")
    sched.set_timesteps(5)
    x, labels = torch.randn(2, 4, 8, 8), torch.tensor([1, 0])
    emb = model.table[labels]
    ref = x.clone()
    with torch.no_grad():
        for k in sched.timesteps:
            out = model.unet(ref, encoder_hidden_states=emb, timestep=k.expand(2)).sample
            ref = sched.step(out, k, ref).prev_sample
    grid = [1.0 - float(s) for s in sched.sigmas]  # the sigmas end at 0 (t = 1)
    y = _euler(model, x, grid, labels)
    assert torch.allclose(y, ref, atol=1e-5, rtol=1e-5), (y - ref).abs().max()
    img = model.decode(y)  # latents through the folder's VAE
    assert img.shape == (2, 3, 8, 8) and img.abs().max() <= 1
    with pytest.raises(ConfigError, match="VP scheduler"):
        SDVelocity(SDConfig(path=str(flow_dir), prediction="epsilon"))


def test_unsupported_denoiser_and_missing_folder_are_one_line(tmp_path) -> None:
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(ConfigError, match="missing scheduler/"):
        SDVelocity(SDConfig(path=str(tmp_path)))
    FlowMatchEulerDiscreteScheduler().save_pretrained(tmp_path / "scheduler")
    with pytest.raises(ConfigError, match="'FluxTransformer2DModel' is not supported"):
        SDVelocity(SDConfig(path=str(tmp_path)))
    with pytest.raises(ConfigError, match="missing unet/ or transformer/"):
        SDVelocity(SDConfig(path=str(tmp_path / "nowhere")))


def _train(tmp_path, name: str, model: str, pairs) -> None:
    from fastflow.cli.main import main

    (tmp_path / f"{name}.yaml").write_text(f"model: {model}\ndata: {{name: pairs, root: '{pairs}'}}\n"
                                           "objective: {name: reflow}\n")
    run = tmp_path / name
    assert main(["train", str(tmp_path / f"{name}.yaml"), f"out_dir={run}", "train.steps=2", "train.batch_size=2",
                 "train.ckpt_every=2", "train.sample_every=0", "train.progress=false", "train.tensorboard=false"]) == 0


def test_cli_pairs_and_students_from_both_teachers(ddpm_dir, flow_dir, tmp_path) -> None:
    """SlimFlow from a DDPM folder (a fastflow UNet student on its pairs) and InstaFlow-style from a
    flow-matching transformer (a 2-RF student initialised from it, prediction flow), through the CLI."""
    from fastflow.cli.main import main

    pairs = tmp_path / "ddpm-pairs"
    assert main(["pairs", "--diffusers", str(ddpm_dir), "--solver", "euler", "--steps", "3", "--count", "4",
                 "--shard-size", "4", "--out", str(pairs), "--quiet"]) == 0
    manifest = json.loads((pairs / "manifest.json").read_text())
    assert manifest["count"] == 4 and manifest["settings"]["teacher"]["denoiser"] == "UNet2DModel"
    _train(tmp_path, "slim", "{preset: tiny}", pairs)
    assert (tmp_path / "slim" / "checkpoints").is_dir()

    table = flow_dir / "prompts.safetensors"
    pairs = tmp_path / "flow-pairs"
    assert main(["pairs", "--diffusers", str(flow_dir), "--prompts", str(table), "--cfg", "2", "--solver", "euler",
                 "--steps", "3", "--count", "4", "--shard-size", "4", "--out", str(pairs), "--quiet"]) == 0
    assert json.loads((pairs / "manifest.json").read_text())["settings"]["num_classes"] == 2
    _train(tmp_path, "2rf", f"{{arch: sd, path: '{flow_dir}', prediction: flow, prompts: '{table}'}}", pairs)
    assert (tmp_path / "2rf" / "checkpoints").is_dir()
    assert main(["pairs", "--diffusers", str(flow_dir), "--count", "2", "--out", str(tmp_path / "p")]) == 2
    assert (
        main(["pairs", "--diffusers", str(ddpm_dir), "--cfg", "2", "--count", "2", "--out", str(tmp_path / "q")]) == 2
    )
