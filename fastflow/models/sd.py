r"""Stable-Diffusion-style UNets from diffusers (``pip install 'fastflow[diffusers]'``) in
fastflow's convention: ``model(x, t, cond) → v`` with t = 0 noise, t = 1 data, in latent space.

A VP teacher (ε-, v- or x-prediction over a discrete schedule :math:`\bar\alpha_k`) sees
:math:`x_k = \alpha_k x_1 + \sigma_k\varepsilon` with :math:`\alpha = \sqrt{\bar\alpha}`,
:math:`\sigma = \sqrt{1-\bar\alpha}`. Dividing by :math:`\alpha + \sigma` gives our path

.. math:: y = \frac{x_k}{\alpha+\sigma} = t\,x_1 + (1-t)\,\varepsilon,\qquad
          t = \frac{\alpha}{\alpha+\sigma},\quad \operatorname{logit} t = \log\frac{\alpha}{\sigma} = \lambda,

so our time is a re-parametrised log-SNR. The velocity is :math:`v = \hat x_1 - \hat\varepsilon`
from the model's predictions; a continuous t maps to a fractional timestep by interpolating k
linearly in λ. Euler steps of this velocity on a DDIM scheduler's own grid are DDIM steps exactly
(``tests/test_sd.py``). Times outside the schedule's range (t below :math:`t(k_\max)`, e.g. the
pure-noise start t = 0) query the model at the end of its range, as DDIM does at its first step.

``prediction: velocity`` is InstaFlow's parametrisation of the 2-RF / one-step students: the UNet
outputs our v directly at timestep ``1000·(1 − t)``.

Conditions: a LongTensor of prompt indices into the prompt table (a ``fastflow prompts`` file;
the null prompt is the row after the last, so labels, CFG and pair shards work exactly as for
class labels), a float tensor ``[B, L, D]`` of text embeddings, or ``{"tokens": [B, L, D]}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fastflow.errors import ConfigError, ShapeError
from fastflow.flow.guidance import Cond
from fastflow.utils.schema import build

PREDICTIONS = ("epsilon", "v_prediction", "sample", "velocity")
_PARTS = ("unet", "scheduler")


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise ConfigError("Stable Diffusion models need diffusers: pip install 'fastflow[diffusers]'") from None
    return diffusers


def check_sd_dir(path: str | Path, parts: tuple[str, ...] = _PARTS) -> Path:
    """A local diffusers directory with the given sub-folders, or one clear error."""
    p = Path(path).expanduser()
    missing = [s for s in parts if not (p / s).is_dir()]
    if missing:
        raise ConfigError(f"Stable Diffusion weights not found at {p} (missing {', '.join(m + '/' for m in missing)}): "
                          "point to a local diffusers directory such as stable-diffusion-v1-5; "
                          "nothing is downloaded")
    return p


class VPSchedule:
    """A diffusers scheduler's :math:`\bar\alpha_k` seen as fastflow time (see module docstring).
    All maps are torch ops on the times' device (no host round trip per call)."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        a = alphas_cumprod.double().clamp(1e-12, 1 - 1e-12)
        self.lam = 0.5 * torch.log(a / (1 - a))  # decreasing in k
        if not bool((self.lam.diff() < 0).all()):
            raise ConfigError("alphas_cumprod must decrease strictly with the timestep")
        self._increasing: dict[torch.device, Tensor] = {}
        self.t_min, self.t_max = self.t_of_timestep(len(a) - 1), self.t_of_timestep(0)

    def t_of_timestep(self, k: float) -> float:
        i = min(int(k), len(self.lam) - 2)
        lam = float(self.lam[i] + (k - i) * (self.lam[i + 1] - self.lam[i]))
        return 1.0 / (1.0 + math.exp(-lam))

    def timestep(self, t: Tensor) -> Tensor:
        """Fractional timestep (float64) of (clamped) times ``t``: ``k`` linear in λ between grid points."""
        if t.device not in self._increasing:
            self._increasing[t.device] = self.lam.flip(0).to(t.device)
        rev = self._increasing[t.device]  # rev[j] = λ at timestep K − 1 − j
        lam = torch.logit(t.double().clamp(self.t_min, self.t_max))
        j = torch.searchsorted(rev, lam).clamp(1, len(rev) - 1)
        lo, hi = rev[j - 1], rev[j]
        return (len(rev) - 1) - ((j - 1) + (lam - lo) / (hi - lo))

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``α, σ`` (float64) of the VP state at (clamped) times ``t``: α/σ = t/(1−t), α² + σ² = 1."""
        lam = torch.logit(t.double().clamp(self.t_min, self.t_max))
        return torch.sigmoid(2 * lam).sqrt(), torch.sigmoid(-2 * lam).sqrt()


def vp_predictions(out: Tensor, x_k: Tensor, alpha: Tensor, sigma: Tensor, prediction: str) -> tuple[Tensor, Tensor]:
    """``(x̂1, ε̂)`` from a VP model output at state ``x_k = α x1 + σ ε``."""
    if prediction == "epsilon":
        return (x_k - sigma * out) / alpha, out
    if prediction == "v_prediction":  # v_VP = α ε − σ x1
        return alpha * x_k - sigma * out, sigma * x_k + alpha * out
    if prediction == "sample":
        return out, (x_k - alpha * out) / sigma
    raise ConfigError(f"unknown VP prediction type {prediction!r}")


@dataclass
class SDConfig:
    """``model: {arch: sd, path: DIR, prediction: velocity, prompts: TABLE}`` in a training config."""

    path: str
    prediction: str | None = None  # None: the scheduler's prediction_type
    prompts: str | None = None  # prompt table from `fastflow prompts`
    resolution: int | None = None  # latent resolution (default: the UNet's sample_size)
    in_channels: int = 4
    num_classes: int = 0  # number of prompts in the table (filled in on build)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SDConfig:
        return build(cls, d, "model.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_prompt_table(path: str | Path) -> tuple[Tensor, list[str]]:
    """``(embeddings [P + 1, L, D] with the null prompt last, prompts)`` of a prompt table."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            prompts = (f.metadata() or {}).get("prompts")
        t = load_file(str(path))
    except Exception as e:  # noqa: BLE001 — missing, truncated, foreign
        raise ConfigError(f"{path}: not a readable prompt table ({e.__class__.__name__}: {e})") from None
    emb = t.get("embeddings")
    if set(t) != {"embeddings", "null"} or emb.dim() != 3 or t["null"].shape != (1, *emb.shape[1:]):
        raise ConfigError(f"{path}: a prompt table holds embeddings [P, L, D] and null [1, L, D]")
    return torch.cat([t["embeddings"], t["null"]]).float(), json.loads(prompts) if prompts else []


class SDVelocity(nn.Module):
    """A diffusers ``UNet2DConditionModel`` answering ``v(x, t, cond)`` in fastflow's convention."""

    def __init__(self, config: SDConfig, unet: nn.Module | None = None, schedule: VPSchedule | None = None,
                 table: Tensor | None = None) -> None:
        super().__init__()
        config = replace(config)  # a copy: the caller's config is never changed
        path = config.path
        if unet is None:
            diffusers = _diffusers()
            p = check_sd_dir(path)
            unet = diffusers.UNet2DConditionModel.from_pretrained(p, subfolder="unet", local_files_only=True)
            sched = diffusers.DDIMScheduler.from_pretrained(p, subfolder="scheduler", local_files_only=True)
            schedule = VPSchedule(sched.alphas_cumprod)
            config.prediction = config.prediction or sched.config.prediction_type
            self.num_train_timesteps = int(sched.config.num_train_timesteps)
        else:
            self.num_train_timesteps = 1000 if schedule is None else len(schedule.lam)
        if config.prediction not in PREDICTIONS:
            raise ConfigError(f"prediction must be one of {PREDICTIONS}, got {config.prediction!r}")
        if config.prediction != "velocity" and schedule is None:
            raise ConfigError(f"prediction {config.prediction!r} needs the scheduler's alphas_cumprod")
        if table is None and config.prompts:
            table, _ = load_prompt_table(config.prompts)
        config.in_channels = int(unet.config.in_channels)
        config.resolution = config.resolution or int(unet.config.sample_size)
        config.num_classes = 0 if table is None else len(table) - 1
        self.config, self.unet, self.schedule = config, unet, schedule
        self.register_buffer("table", table, persistent=False)
        self._vae: dict[str, nn.Module] = {}  # loaded on first decode; a dict keeps it out of the state dict

    def null_cond(self, cond: Cond) -> Cond:
        if cond is None:
            return None
        if self.table is None:
            raise ConfigError("CFG needs a null prompt: build the model with a prompt table")
        if isinstance(cond, dict):
            return {"tokens": self.null_cond(cond["tokens"])}
        if not cond.is_floating_point():
            return torch.full_like(cond, self.config.num_classes)
        return self.table[-1:].to(cond.dtype).expand_as(cond)

    def embeddings(self, cond: Cond, b: int) -> Tensor:
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
        if cond.dim() != 3 or len(cond) != b:
            raise ShapeError(f"text embeddings must be [{b}, L, D], got {tuple(cond.shape)}")
        return cond

    def forward(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        b = len(x)
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ShapeError(f"x must be [B, {self.config.in_channels}, H, W] latents, got {tuple(x.shape)}")
        dtype = next(self.unet.parameters()).dtype
        emb = self.embeddings(cond, b).to(dtype)
        if self.config.prediction == "velocity":
            k = self.num_train_timesteps * (1 - t.float())
            return self.unet(x.to(dtype), k, emb).sample.float()
        alpha, sigma = (s.float().view(-1, 1, 1, 1) for s in self.schedule.alpha_sigma(t))
        x_k = x.float() * (alpha + sigma)
        k = self.schedule.timestep(t).float()
        out = self.unet(x_k.to(dtype), k, emb).sample.float()
        x1, eps = vp_predictions(out, x_k, alpha, sigma, self.config.prediction)
        return x1 - eps

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images in [−1, 1] from latents through the directory's VAE (for viewing)."""
        if "vae" not in self._vae:
            self._vae["vae"] = load_vae(self.config.path, latents.device)
        vae = self._vae["vae"].to(latents.device)
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample.float().clamp(-1, 1)


def load_vae(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    p = check_sd_dir(path, ("vae",))
    return _diffusers().AutoencoderKL.from_pretrained(p, subfolder="vae", local_files_only=True).to(device).eval()


@torch.no_grad()
def encode_prompts(path: str | Path, prompts: list[str], device: torch.device | str = "cpu",
                   batch_size: int = 64) -> Tensor:
    """CLIP text embeddings ``[P, L, D]`` with the directory's tokenizer and text encoder."""
    p = check_sd_dir(path, ("tokenizer", "text_encoder"))
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise ConfigError("prompt encoding needs transformers: pip install 'fastflow[diffusers]'") from None
    tok = CLIPTokenizer.from_pretrained(p, subfolder="tokenizer", local_files_only=True)
    enc = CLIPTextModel.from_pretrained(p, subfolder="text_encoder", local_files_only=True).to(device).eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = tok(prompts[i:i + batch_size], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids.to(device)
        out.append(enc(ids)[0].float().cpu())
    return torch.cat(out)


def write_prompt_table(path: str | Path, prompts: list[str], out: str | Path,
                       device: torch.device | str = "cpu") -> Path:
    """Encode ``prompts`` and the empty (null) prompt into a safetensors prompt table."""
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise ConfigError("no prompts given (one per line)")
    emb = encode_prompts(path, [*prompts, ""], device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": emb[:-1].contiguous(), "null": emb[-1:].contiguous()}, str(out),
              metadata={"prompts": json.dumps(prompts), "source": str(Path(path).expanduser())})
    return out
