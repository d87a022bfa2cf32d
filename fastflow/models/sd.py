r"""Local diffusers models in fastflow's convention: ``model(x, t, cond) → v`` with t = 0 noise,
t = 1 data (``pip install 'fastflow[diffusers]'``; ``model: {arch: sd, path: DIR}`` in a config).

The denoiser may be a Stable-Diffusion-style ``UNet2DConditionModel``, a DDPM/DDIM-style
``UNet2DModel`` (pixel space, unconditional or class-conditional) or a flow-matching transformer
(SANA-style); :mod:`fastflow.models.diffusers_dir` lists the families and their calls. Its scheduler
decides the time map (:mod:`fastflow.models.schedules`): a VP teacher's ε-/v-/x-prediction becomes
:math:`v = \hat x_1 - \hat\varepsilon` at the state :math:`(\alpha+\sigma)\,y`; a flow-matching model's
output is :math:`-v` at timestep :math:`K(1-t)`. Euler steps of this velocity on a DDIM scheduler's
own grid are DDIM steps, and on a flow-matching scheduler's grid its Euler steps, exactly
(``tests/test_sd.py``, ``tests/test_diffusers_teachers.py``).

``prediction: velocity`` is InstaFlow's parametrisation of the 2-RF / one-step students: the
denoiser outputs our v directly at timestep ``K·(1 − t)``.

Conditions of text denoisers: a LongTensor of prompt indices into the prompt table (a ``fastflow
prompts`` file; the null prompt is the row after the last, so labels, CFG and pair shards work
exactly as for class labels), a float tensor ``[B, L, D]`` of text embeddings, or
``{"tokens": [B, L, D]}``. Class-conditional UNet2DModels take labels in ``[0, num_class_embeds)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow.errors import ConfigError, ShapeError
from fastflow.flow.guidance import Cond
from fastflow.models.diffusers_dir import backbone_of, decode_latents, load_denoiser, load_vae, locate
from fastflow.models.prompts import load_prompt_table
from fastflow.models.schedules import PREDICTIONS, VP_PREDICTIONS, VPSchedule, read_scheduler, vp_predictions
from fastflow.utils.schema import build


@dataclass
class SDConfig:
    """``model: {arch: sd, path: DIR, prediction: velocity, prompts: TABLE}`` in a training config."""

    path: str
    prediction: str | None = None  # None: the scheduler's own (epsilon, v_prediction, sample or flow)
    prompts: str | None = None  # prompt table from `fastflow prompts` (text denoisers)
    resolution: int | None = None  # sample resolution (default: the denoiser's sample_size)
    in_channels: int = 4
    num_classes: int = 0  # prompts in the table, or a UNet2DModel's classes (filled in on build)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SDConfig:
        return build(cls, d, "model.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _square(size: Any) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConfigError(f"non-square sample_size {list(size)} is not supported")
        size = size[0]
    return int(size)


class SDVelocity(nn.Module):
    """A local diffusers denoiser answering ``v(x, t, cond)`` in fastflow's convention. ``unet``,
    ``schedule`` and ``backbone`` (a :data:`~fastflow.models.diffusers_dir.BACKBONES` name; default:
    the module's class) inject a built model instead of loading ``config.path``."""

    def __init__(self, config: SDConfig, unet: nn.Module | None = None, schedule: VPSchedule | None = None,
                 table: Tensor | None = None, backbone: str | None = None) -> None:
        super().__init__()
        config = replace(config)  # a copy: the caller's config is never changed
        self.num_train_timesteps = 1000 if schedule is None else len(schedule.lam)
        if unet is None:
            folder, backbone, scheduler = locate(config.path)
            unet, info = load_denoiser(folder, backbone), read_scheduler(scheduler)
            schedule, self.num_train_timesteps = info.vp, info.num_train_timesteps
            config.prediction = config.prediction or info.prediction
        self.backbone = backbone_of(backbone or type(unet).__name__)
        if config.prediction not in PREDICTIONS:
            raise ConfigError(f"prediction must be one of {PREDICTIONS}, got {config.prediction!r}")
        if config.prediction in VP_PREDICTIONS and schedule is None:
            raise ConfigError(f"prediction {config.prediction!r} needs a VP scheduler (alphas_cumprod); "
                              "this model's scheduler is flow matching: use prediction flow or velocity")
        if table is None and config.prompts:
            table, _ = load_prompt_table(config.prompts)
        if table is not None and self.backbone.conditioning != "text":
            raise ConfigError(f"a prompt table was given but {type(unet).__name__} takes no text")
        config.in_channels = int(unet.config.in_channels)
        config.resolution = config.resolution or _square(unet.config.sample_size)
        if self.backbone.conditioning == "class":
            config.num_classes = int(unet.config.get("num_class_embeds") or 0)
        else:
            config.num_classes = 0 if table is None else len(table) - 1
        self.config, self.unet, self.schedule = config, unet, schedule
        self.register_buffer("table", table, persistent=False)
        self._vae: dict[str, nn.Module] = {}  # loaded on first decode; a dict keeps it out of the state dict

    def null_cond(self, cond: Cond) -> Cond:
        if cond is None:
            return None
        if self.backbone.conditioning == "class":
            raise ConfigError("CFG needs a null class, which this UNet2DModel's classes lack")
        if self.table is None:
            raise ConfigError("CFG needs a null prompt: build the model with a prompt table")
        if isinstance(cond, dict):
            return {"tokens": self.null_cond(cond["tokens"])}
        if not cond.is_floating_point():
            return torch.full_like(cond, self.config.num_classes)
        return self.table[-1:].to(cond.dtype).expand_as(cond)

    def condition(self, cond: Cond, b: int) -> Tensor | None:
        """What the denoiser is called with: text embeddings ``[B, L, D]``, class labels ``[B]`` or None."""
        if self.backbone.conditioning == "class":
            return self._labels(cond, b)
        if isinstance(cond, dict):
            cond = cond["tokens"]
        if cond is None:
            if self.table is None:
                raise ConfigError("an unconditional call needs a prompt table (its null prompt)")
            return self.table[-1:].expand(b, -1, -1)
        if not cond.is_floating_point():
            if self.table is None:
                raise ConfigError("prompt indices given but the model has no prompt table")
            if cond.shape != (b,):
                raise ShapeError(f"prompt indices must be [{b}], got {tuple(cond.shape)}")
            try:  # an embedding lookup: out-of-range indices raise (a device assert on CUDA), no host sync
                return F.embedding(cond, self.table.flatten(1)).view(b, *self.table.shape[1:])
            except IndexError:
                raise ShapeError(f"prompt indices must lie in [0, {self.config.num_classes}]") from None
        if cond.dim() != 3 or cond.shape[0] != b:  # shape, not len(): len() fixes a symbolic batch in export
            raise ShapeError(f"text embeddings must be [{b}, L, D], got {tuple(cond.shape)}")
        return cond

    def _labels(self, cond: Cond, b: int) -> Tensor | None:
        n = self.config.num_classes
        if not n:
            if cond is not None:
                raise ConfigError("this UNet2DModel is unconditional: give no condition")
            return None
        if not isinstance(cond, Tensor) or cond.is_floating_point() or cond.shape != (b,):
            raise ShapeError(f"class labels must be an integer tensor [{b}]")
        try:  # a lookup raises on out-of-range labels with no host sync (as prompt indices do)
            return F.embedding(cond, torch.arange(n, device=cond.device).view(n, 1)).view(b)
        except IndexError:
            raise ShapeError(f"class labels must lie in [0, {n})") from None

    def forward(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        b, c = x.shape[0], self.config.in_channels  # not len(x): torch.export would specialise the batch
        if x.dim() != 4 or x.shape[1] != c:
            raise ShapeError(f"x must be [B, {c}, H, W], got {tuple(x.shape)}")
        dtype = next(self.unet.parameters()).dtype
        cnd = self.condition(cond, b)
        cnd = cnd.to(dtype) if cnd is not None and cnd.is_floating_point() else cnd
        if self.config.prediction in ("velocity", "flow"):
            k = self.num_train_timesteps * (1 - t.float())
            out = self.backbone.call(self.unet, x.to(dtype), k, cnd).float()
            return out if self.config.prediction == "velocity" else -out
        alpha, sigma = (s.float().view(-1, 1, 1, 1) for s in self.schedule.alpha_sigma(t))
        x_k = x.float() * (alpha + sigma)
        k = self.schedule.timestep(t).float()
        out = self.backbone.call(self.unet, x_k.to(dtype), k, cnd).float()
        x1, eps = vp_predictions(out, x_k, alpha, sigma, self.config.prediction)
        return x1 - eps

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Images in [−1, 1] for viewing: latents through the directory's VAE; pixel models' samples as they are."""
        if not self.backbone.latent:
            return x.float().clamp(-1, 1)
        if "vae" not in self._vae:
            self._vae["vae"] = load_vae(self.config.path)
        vae = self._vae["vae"].to(x.device)
        return decode_latents(vae, x.to(vae.dtype)).float()
