"""A local diffusers directory: where its denoiser, scheduler and VAE are, which denoiser families
fastflow drives and how each is called. Nothing is downloaded (``local_files_only``).

Layouts: a pipeline folder (``unet/`` or ``transformer/``, ``scheduler/``, optional ``vae/``,
``text_encoder/``, ``tokenizer/``), or a single-model folder (``config.json`` and
``scheduler_config.json`` at its root, as DDPM's CIFAR-10 releases are).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from fastflow.errors import ConfigError
from fastflow.utils.io import read_json

DENOISER_FOLDERS = ("unet", "transformer")


def diffusers_module() -> Any:
    try:
        import diffusers
    except ImportError:
        raise ConfigError("diffusers models need diffusers: pip install 'fastflow[diffusers]'") from None
    return diffusers


def check_sd_dir(path: str | Path, parts: tuple[str, ...]) -> Path:
    """A local diffusers directory with the given sub-folders, or one clear error."""
    p = Path(path).expanduser()
    missing = [s for s in parts if not (p / s).is_dir()]
    if missing:
        raise ConfigError(f"diffusers weights not found at {p} (missing {', '.join(m + '/' for m in missing)}): "
                          "point to a local diffusers directory such as stable-diffusion-v1-5; "
                          "nothing is downloaded")
    return p


def _sana(m: nn.Module, x: Tensor, k: Tensor, c: Tensor | None) -> Tensor:
    return m(x, encoder_hidden_states=c, timestep=k * float(m.config.get("timestep_scale", 1.0))).sample


@dataclass(frozen=True)
class Backbone:
    """A denoiser family: how it is conditioned (``text`` embeddings [B, L, D], ``class`` labels or
    ``none``), how ``(module, x, timestep, condition) → output`` is called, its folder in a pipeline,
    its last (linear) layer and the diffusers pipeline that runs it."""

    conditioning: str
    call: Callable[[nn.Module, Tensor, Tensor, Tensor | None], Tensor]
    latent: bool  # samples are VAE latents (decoded for viewing)
    folder: str
    output_layer: str
    pipeline: str


BACKBONES: dict[str, Backbone] = {
    "UNet2DConditionModel": Backbone("text", lambda m, x, k, c: m(x, k, c).sample, True, "unet", "conv_out",
                                     "StableDiffusionPipeline"),
    "UNet2DModel": Backbone("class", lambda m, x, k, c: m(x, k, class_labels=c).sample, False, "unet", "conv_out",
                            "DDPMPipeline"),
    "SanaTransformer2DModel": Backbone("text", _sana, True, "transformer", "proj_out", "SanaPipeline"),
}


def backbone_of(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ConfigError(f"denoiser {name!r} is not supported; fastflow drives {', '.join(BACKBONES)} "
                          "(Flux and SD3 transformers also need packed latents or pooled text projections)")
    return BACKBONES[name]


def class_name(config_file: Path) -> str:
    config = read_json(config_file)
    if not isinstance(config, dict) or not isinstance(config.get("_class_name"), str):
        raise ConfigError(f"{config_file}: not a diffusers model config (no '_class_name')")
    return config["_class_name"]


def locate(path: str | Path) -> tuple[Path, str, Path]:
    """``(denoiser folder, its diffusers class name, scheduler config file)`` of a local directory."""
    root = Path(path).expanduser()
    folders = [root / s for s in DENOISER_FOLDERS if (root / s / "config.json").is_file()]
    scheduler = root / "scheduler" / "scheduler_config.json"
    if not folders and (root / "config.json").is_file():  # a single-model folder
        folders, scheduler = [root], root / "scheduler_config.json"
    if not folders or not scheduler.is_file():
        what = "unet/ or transformer/" if not folders else "scheduler/"
        raise ConfigError(f"diffusers weights not found at {root} (missing {what}): point to a local diffusers "
                          "directory such as stable-diffusion-v1-5 or ddpm-cifar10-32; nothing is downloaded")
    return folders[0], class_name(folders[0] / "config.json"), scheduler


_SIZE_KEY = re.compile(r".*(channels|_dim|size|layers|heads|groups).*")


def denoiser_from_config(cfg: Any, source: str) -> nn.Module:
    """A denoiser with random weights from a diffusers config (a JSON object naming a supported
    ``_class_name``); sizes are checked positive and diffusers' own checks become one ConfigError."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("_class_name"), str):
        raise ConfigError(f"{source}: not a diffusers model config (a JSON object with _class_name)")
    backbone_of(cfg["_class_name"])
    for key, value in cfg.items():
        sizes = value if isinstance(value, list) else [value]
        if _SIZE_KEY.fullmatch(key) and any(isinstance(v, int) and not isinstance(v, bool) and v < 1 for v in sizes):
            raise ConfigError(f"{source}: {key} must hold sizes >= 1, got {value}")
    try:
        return getattr(diffusers_module(), cfg["_class_name"]).from_config(cfg)
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # diffusers' checks of its config
        raise ConfigError(f"{source}: diffusers refuses the config ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:300]})") from None


def load_denoiser(folder: Path, name: str) -> nn.Module:
    backbone_of(name)
    return getattr(diffusers_module(), name).from_pretrained(folder, local_files_only=True)


def load_vae(path: str | Path) -> nn.Module:
    """The directory's VAE (``AutoencoderKL``, ``AutoencoderDC``, … as its config names it)."""
    folder = check_sd_dir(path, ("vae",)) / "vae"
    return getattr(diffusers_module(), class_name(folder / "config.json")).from_pretrained(
        folder, local_files_only=True).eval()


def decode_latents(vae: nn.Module, latents: Tensor) -> Tensor:
    """Images in [−1, 1] from latents: undo the VAE's scaling (and shift) factor, decode, clamp."""
    shift = vae.config.get("shift_factor") or 0.0
    return vae.decode(latents / vae.config.scaling_factor + shift, return_dict=False)[0].clamp(-1, 1)


#: SD-1.5's UNet, VAE, CLIP text encoder and scheduler configs (diffusers/transformers config classes)
SD15_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "sd15"
#: SD-1.x's structure at toy size (8×8 latents, 2-layer text encoder): ``fastflow tiny-sd``
TINY_CONFIGS = SD15_CONFIGS.with_name("sd-tiny")


def _stand_in_tokenizer(out: Path, max_length: int) -> None:
    """A CLIP BPE tokenizer over lowercase letters (the real 49,408-entry vocabulary is not shipped):
    its ids lie inside any CLIP vocabulary, so a real-size text encoder runs on them."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        (src / "vocab.json").write_text(json.dumps(vocab))
        (src / "merges.txt").write_text("#version: 0.2\n")
        CLIPTokenizer(str(src / "vocab.json"), str(src / "merges.txt"), model_max_length=max_length).save_pretrained(
            out
        )


def random_sd_folder(out: str | Path, configs: str | Path = SD15_CONFIGS, seed: int = 0) -> Path:
    """A diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) with the architectures
    of ``configs`` (``unet.json``, ``vae.json``, ``text_encoder.json``, ``scheduler.json``) and random
    weights, one component in memory at a time. Nothing is downloaded."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    d, out, configs = diffusers_module(), Path(out), Path(configs)

    def config(name: str) -> dict[str, Any]:
        return read_json(configs / f"{name}.json")

    torch.manual_seed(seed)
    for name, folder in (("unet", "unet"), ("vae", "vae"), ("scheduler", "scheduler")):
        cfg = config(name)
        obj = getattr(d, cfg["_class_name"]).from_config(cfg)
        obj.save_pretrained(out / folder)
        del obj
    text = CLIPTextConfig(**{k: v for k, v in config("text_encoder").items() if k != "architectures"})
    CLIPTextModel(text).save_pretrained(out / "text_encoder")
    _stand_in_tokenizer(out / "tokenizer", text.max_position_embeddings)
    return out
