r"""A diffusers-backed student (``model.arch: sd``) saved as a folder that stock diffusers runs as a
one-step (or k-step) pipeline: ``DiffusionPipeline.from_pretrained(OUT)``.

The scheduler is DPM-Solver++ of order 1 on flow sigmas (``DPMSolverMultistepScheduler`` with
``use_flow_sigmas``, ``prediction_type: flow_prediction``, shift 1). For a rectified flow its
first-order step is Euler exactly: with :math:`\hat x_1 = x_s - \sigma_s\,\text{out}`,

.. math:: x_t = \tfrac{\sigma_t}{\sigma_s}\,x_s + \bigl(1 - \tfrac{\sigma_t}{\sigma_s}\bigr)\hat x_1
              = x_s + (\sigma_t - \sigma_s)\,\text{out},

and its k-step grid :math:`\sigma_i = 1 - t_i` is fastflow's Euler grid
:math:`t_i = \epsilon + i(1-\epsilon)/k` with :math:`\epsilon = 1/K` (K = 1000 training timesteps:
ε = 10⁻³, fastflow's default). The denoiser must output :math:`\varepsilon - x_1`; a
``prediction: velocity`` student outputs :math:`v = x_1 - \varepsilon`, so its last linear layer is
negated (exact in floating point). The other components (VAE, text encoder, tokenizer, …) are
copied from the student's source folder.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastflow.errors import ArtifactError, ConfigError
from fastflow.flow.sample import generate
from fastflow.models.diffusers_dir import DENOISER_FOLDERS, class_name, diffusers_module
from fastflow.utils.io import read_json, staged_dir

SCHEDULER = "DPMSolverMultistepScheduler"


def scheduler_config(num_train_timesteps: int) -> dict[str, Any]:
    """DPM-Solver++ order 1 on flow sigmas: Euler on fastflow's grid (module docstring)."""
    return {
        "num_train_timesteps": num_train_timesteps,
        "use_flow_sigmas": True,
        "flow_shift": 1.0,
        "prediction_type": "flow_prediction",
        "solver_order": 1,
        "algorithm_type": "dpmsolver++",
        "final_sigmas_type": "zero",
        "lower_order_final": True,
        "steps_offset": 1,
    }  # what Stable Diffusion's pipeline expects (else a warning on every load); unused by linspace spacing


def flow_denoiser(model: nn.Module) -> nn.Module:
    """A copy of the student's denoiser that outputs ``ε − x1`` (``flow_prediction``)."""
    pred = model.config.prediction
    if pred not in ("velocity", "flow"):
        raise ConfigError(f"export-diffusers takes students with prediction velocity or flow, not {pred!r}")
    if model.backbone.conditioning == "class" and model.config.num_classes:
        raise ConfigError("a class-conditional UNet2DModel has no diffusers pipeline that passes its labels")
    net = copy.deepcopy(model.unet).float().eval()
    if pred == "velocity":
        last = getattr(net, model.backbone.output_layer)
        with torch.no_grad():
            last.weight.neg_()
            if last.bias is not None:
                last.bias.neg_()
    return net


def _component(folder: Path) -> list[str | None]:
    """``[library, class]`` of a saved component, as ``model_index.json`` lists it."""
    config = folder / "config.json"
    if config.is_file():
        data = read_json(config, ArtifactError)
        if not isinstance(data, dict):
            raise ArtifactError(f"{config}: not a JSON object")
        if "_class_name" in data:
            return ["diffusers", data["_class_name"]]
        if data.get("architectures"):
            return ["transformers", data["architectures"][0]]
    tok = folder / "tokenizer_config.json"
    tokenizer = read_json(tok, ArtifactError) if tok.is_file() else {}
    if isinstance(tokenizer, dict) and tokenizer.get("tokenizer_class"):
        return ["transformers", tokenizer["tokenizer_class"]]
    if (folder / "scheduler_config.json").is_file():
        return ["diffusers", class_name(folder / "scheduler_config.json")]
    return [None, None]


def model_index(pipeline: str, stage: Path, source: Path) -> dict[str, Any]:
    """The source's ``model_index.json`` with this folder's components, or one built for ``pipeline``."""
    d = diffusers_module()
    index = read_json(source / "model_index.json") if (source / "model_index.json").is_file() else {}
    if not isinstance(index, dict):
        raise ConfigError(f"{source / 'model_index.json'}: not a JSON object")
    index.setdefault("_class_name", pipeline)
    index["_diffusers_version"] = d.__version__
    for sub in sorted(p for p in stage.iterdir() if p.is_dir()):
        index[sub.name] = _component(sub)
    for name in getattr(getattr(d, index["_class_name"]), "_optional_components", []):
        index.setdefault(name, [None, None])
    if "requires_safety_checker" in index or index["_class_name"] == "StableDiffusionPipeline":
        index["requires_safety_checker"] = bool(index.get("safety_checker", [None])[0])
    return index


def write_diffusers_folder(model: nn.Module, out: str | Path) -> Path:
    """Write ``out`` (must not exist, or be empty) from an ``SDVelocity`` student; atomic: the folder
    is built beside ``out`` and renamed into place when complete."""
    source = Path(model.config.path).expanduser()
    net, backbone = flow_denoiser(model), model.backbone
    with staged_dir(out) as stage:
        net.save_pretrained(stage / backbone.folder)
        sched = getattr(diffusers_module(), SCHEDULER)(**scheduler_config(model.num_train_timesteps))
        sched.save_pretrained(stage / "scheduler")
        skip = {*DENOISER_FOLDERS, "scheduler"}
        for sub in sorted(source.iterdir()):
            if sub.is_dir() and sub.name not in skip and not sub.name.startswith("."):
                shutil.copytree(sub, stage / sub.name)
        (stage / "model_index.json").write_text(json.dumps(model_index(backbone.pipeline, stage, source), indent=2))
    return Path(out)


@torch.no_grad()
def round_trip(folder: str | Path, model: nn.Module, n: int = 2, seed: int = 0, steps: int = 1,
               cfg_scale: float = 1.0) -> dict[str, Any]:
    """Stock diffusers on ``folder`` against fastflow's Euler sampler on the same noise: prompts
    0 … n−1 of the table as ``prompt_embeds`` (text UNets; latents compared) or DDPMPipeline's own
    noise from ``seed`` (unconditional UNet2DModels; images in [0, 1] compared)."""
    pipeline = model.backbone.pipeline
    if pipeline not in ("StableDiffusionPipeline", "DDPMPipeline"):
        raise ConfigError(f"the round-trip check runs StableDiffusionPipeline and DDPMPipeline, not {pipeline}")
    if cfg_scale != 1.0 and (cfg_scale < 1.0 or pipeline != "StableDiffusionPipeline"):
        raise ConfigError(f"--cfg {cfg_scale:g}: diffusers applies classifier-free guidance only above 1 and only in "
                          "text pipelines; compare at 1 (no guidance) or a scale > 1 with a text model")
    pipe = _quiet_load(folder)
    r = model.config.resolution
    z = torch.randn(n, model.config.in_channels, r, r, generator=torch.Generator().manual_seed(seed))
    if pipeline == "StableDiffusionPipeline":
        labels = torch.arange(n) % max(model.config.num_classes, 1)
        ours = generate(model, z, "euler", steps, cond=labels, cfg_scale=cfg_scale).x
        emb = model.table[labels]
        theirs = pipe(prompt_embeds=emb, negative_prompt_embeds=model.table[-1:].expand_as(emb), latents=z.clone(),
                      num_inference_steps=steps, guidance_scale=cfg_scale, output_type="latent").images
    else:
        ours = (generate(model, z, "euler", steps).x / 2 + 0.5).clamp(0, 1)
        images = pipe(batch_size=n, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                      output_type="np").images
        theirs = torch.from_numpy(images).permute(0, 3, 1, 2)
    err = (ours.float() - theirs.float()).abs()
    return {"pipeline": pipeline, "compared": "latents" if pipeline == "StableDiffusionPipeline" else "images",
            "samples": n, "steps": steps, "cfg_scale": cfg_scale, "max_abs_err": float(err.max()),
            "mean_abs_err": float(err.mean())}


def _quiet_load(folder: str | Path) -> Any:
    """``DiffusionPipeline.from_pretrained(folder)`` (float32, as saved) without its loading bar."""
    dlog = diffusers_module().utils.logging
    was_on = dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    try:
        pipe = diffusers_module().DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    finally:
        if was_on:
            dlog.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe
