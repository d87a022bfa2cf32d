"""``fastflow export-diffusers``: a diffusers-backed student as a folder stock diffusers runs, whose
one-step output equals ``fastflow sample --solver one_step`` for the same noise and prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="export-diffusers needs the 'diffusers' extra")
pytest.importorskip("transformers", reason="export-diffusers needs transformers (the 'diffusers' extra)")

from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DModel  # noqa: E402

from fastflow.cli.main import main  # noqa: E402
from fastflow.models.checkpoint import save_model  # noqa: E402
from fastflow.models.sd import SDConfig, SDVelocity  # noqa: E402
from tests.helpers import tiny_sd_student  # noqa: E402


def _save(model: torch.nn.Module, directory) -> str:
    directory.mkdir(parents=True)
    return str(save_model(directory, model))


@pytest.fixture(scope="module")
def sd_student(tmp_path_factory):
    """A velocity-parametrised SD student checkpoint on a tiny SD folder with a 2-prompt table."""
    return tiny_sd_student(tmp_path_factory.mktemp("sd-student"))


def test_one_step_in_diffusers_equals_fastflow_sample(sd_student, tmp_path) -> None:
    ckpt, model = sd_student
    out = tmp_path / "diffusers"
    assert main(["export-diffusers", ckpt, str(out), "--validate", "--cfg", "2"]) == 0
    assert {p.name for p in out.iterdir()} == {"unet", "scheduler", "vae", "text_encoder", "tokenizer",
                                               "model_index.json"}
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    npz = tmp_path / "x.npz"
    assert main(["sample", ckpt, "--solver", "one_step", "--label", "1", "--n", "2", "--cfg", "2", "--seed", "3",
                 "--out", str(npz), "--device", "cpu"]) == 0
    pipe = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))  # fastflow sample's noise
    with torch.no_grad():
        latents = pipe(prompt=["a red dog"] * 2, latents=z, num_inference_steps=1, guidance_scale=2.0,
                       output_type="latent").images
        images = pipe(prompt=["a red dog"] * 2, latents=z, num_inference_steps=1, guidance_scale=2.0,
                      output_type="pt").images
    x = torch.from_numpy(np.load(npz)["x"])
    assert torch.allclose(latents, x, atol=1e-5), (latents - x).abs().max()
    assert torch.allclose(images, model.decode(x) / 2 + 0.5, atol=1e-5)  # the copied VAE decodes alike


def test_flow_student_keeps_its_weights_and_bad_input_is_one_line(sd_student, tmp_path, capsys) -> None:
    ckpt, model = sd_student
    flow = SDVelocity(SDConfig(path=model.config.path, prediction="flow", prompts=model.config.prompts))
    out = tmp_path / "flow"
    assert main(["export-diffusers", _save(flow, tmp_path / "flow-ckpt"), str(out), "--validate"]) == 0
    saved = DiffusionPipeline.from_pretrained(out, local_files_only=True).unet.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in flow.unet.state_dict().items())  # no sign flip for flow
    assert main(["export-diffusers", ckpt, str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    eps = SDVelocity(SDConfig(path=model.config.path, prediction="epsilon", prompts=model.config.prompts))
    assert main(["export-diffusers", _save(eps, tmp_path / "eps-ckpt"), str(tmp_path / "e")]) == 2
    assert "prediction velocity or flow" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.*"))


def test_ddpm_unet_student_round_trips_through_ddpm_pipeline(tmp_path) -> None:
    root = tmp_path / "ddpm"
    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                norm_num_groups=8, attention_head_dim=8).save_pretrained(root)
    DDPMScheduler().save_pretrained(root)
    student = SDVelocity(SDConfig(path=str(root), prediction="velocity"))
    out = tmp_path / "out"
    assert main(["export-diffusers", _save(student, tmp_path / "ckpt"), str(out), "--validate"]) == 0
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
