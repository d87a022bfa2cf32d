"""``FlowPipeline``: a trained student as one callable, in the manner of diffusers' pipelines.

    from fastflow import FlowPipeline
    pipe = FlowPipeline.from_pretrained("runs/fgd")          # a run or checkpoint directory
    images = pipe(n=16, steps=1, seed=0).images               # PIL images (output_type="np" | "pt" | "latent")

The kind of model decides what a call takes: nothing more (unconditional), ``label`` (class), ``prompt``
(an SD student: text, or indices into its prompt table; a token-conditioned UNet: an embedding
``[L, D]``), ``image`` and ``tau`` (an OFTSR student: one-step super-resolution). ``steps=1`` is the
one-step generator ``x1 = z + (1 − ε)·v(z, ε)``; more steps are Euler unless ``solver`` says otherwise.
The noise is drawn on the CPU from ``seed``: the same images on any device and for any ``n`` prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fastflow.errors import ConfigError, ShapeError
from fastflow.flow.sample import generate
from fastflow.fused import apply
from fastflow.metrics.sr_eval import super_resolve
from fastflow.models.checkpoint import CheckpointRecord, load_model, read_record
from fastflow.models.presets import sample_shape, viewable
from fastflow.models.prompts import encode_prompts

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class PipelineOutput:
    """``images``: PIL images, ``[N, H, W, C]`` floats in [0, 1] (``np``), ``[N, C, H, W]`` in [0, 1]
    (``pt``) or the raw samples (``latent``); ``nfe``: velocity calls spent."""

    images: Any
    nfe: int


@dataclass
class FlowPipeline:
    model: nn.Module
    record: CheckpointRecord
    device: torch.device

    @classmethod
    def from_pretrained(cls, path: str | Path, weights: str = "ema", device: str | torch.device = "cpu",
                        fused: str = "auto") -> FlowPipeline:
        """Load a run or checkpoint directory (weights verified) with the kernel path ``fused``."""
        record = read_record(path)
        model = load_model(record.path, weights=weights, device=device)
        apply(model, fused, device)
        return cls(model, record, torch.device(device))

    @torch.no_grad()
    def __call__(self, n: int = 1, steps: int = 1, solver: str | None = None, seed: int = 0,
                 label: int | Sequence[int] | None = None, prompt: str | Sequence[str] | Tensor | None = None,
                 cfg: float = 1.0, image: Any = None, tau: float = 0.5, output_type: str = "pil") -> PipelineOutput:
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(f"output_type is one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if self.record.kind == "image":
            return self._super_resolve(image, tau, seed, output_type)
        if image is not None:
            raise ConfigError("image= is the input of an OFTSR student; this model generates from noise")
        if n < 1 or steps < 1:
            raise ConfigError(f"need n >= 1 and steps >= 1, got {n}, {steps}")
        cond = self._condition(n, label, prompt)
        if cfg != 1.0 and cond is None:
            raise ConfigError(f"cfg={cfg}: guidance needs a conditional model (this one is unconditional)")
        solver = solver or ("one_step" if steps == 1 else "euler")
        z = torch.randn(n, *sample_shape(self.model), generator=torch.Generator().manual_seed(seed))
        res = generate(self.model, z.to(self.device), solver, None if solver in ("one_step", "rk45") else steps,
                       cond=cond, cfg_scale=cfg)
        x = res.x if output_type == "latent" else viewable(self.model, res.x)
        return PipelineOutput(_images(x, output_type), int(res.nfe))

    def _condition(self, n: int, label: Any, prompt: Any) -> Any:
        """Labels ``[n]``, or ``{"tokens": [n, L, D]}`` text embeddings, or None."""
        classes = int(getattr(self.model.config, "num_classes", 0) or 0)
        if prompt is not None and label is not None:
            raise ConfigError("give label or prompt, not both")
        if self.record.kind == "token" or getattr(self.model, "table", None) is not None:
            return self._text(n, prompt if prompt is not None else label)
        if prompt is not None:
            raise ConfigError(f"prompt= needs a text-conditioned model; this one is {self.record.kind}")
        if label is None:
            return torch.arange(n, device=self.device) % classes if classes else None
        if not classes:
            raise ConfigError("label= given but the model is not class-conditional")
        labels = torch.as_tensor([label] * n if isinstance(label, int) else list(label), dtype=torch.long)
        if labels.shape != (n,) or int(labels.min()) < 0 or int(labels.max()) >= classes:
            raise ConfigError(f"label takes one int or n of them in [0, {classes})")
        return labels.to(self.device)

    def _text(self, n: int, prompt: Any) -> Any:
        """Prompts as the text model takes them: free text through the SD folder's text encoder,
        indices into the prompt table, or an embedding ``[L, D]`` / ``[n, L, D]``."""
        if prompt is None:
            return None  # the null prompt: unconditional
        if isinstance(prompt, str) or (isinstance(prompt, Sequence) and all(isinstance(p, str) for p in prompt)):
            if self.record.arch != "sd":
                raise ConfigError("text prompts need an SD student (its text encoder); give an embedding [L, D]")
            texts = [prompt] * n if isinstance(prompt, str) else list(prompt)
            if len(texts) != n:
                raise ConfigError(f"{len(texts)} prompts for n={n} images")
            return {"tokens": encode_prompts(Path(self.model.config.path).expanduser(), texts).to(self.device)}
        if isinstance(prompt, Tensor) and prompt.is_floating_point():
            emb = prompt if prompt.dim() == 3 else prompt[None].expand(n, -1, -1)
            if emb.shape[0] != n or emb.dim() != 3:
                raise ShapeError(f"a prompt embedding is [L, D] or [n, L, D], got {tuple(prompt.shape)}")
            return {"tokens": emb.to(self.device)}
        indices = torch.as_tensor([prompt] * n if isinstance(prompt, int) else list(prompt), dtype=torch.long)
        if indices.shape != (n,):
            raise ConfigError("prompt indices: one int or n of them")
        return indices.to(self.device)

    def _super_resolve(self, image: Any, tau: float, seed: int, output_type: str) -> PipelineOutput:
        if image is None:
            raise ConfigError("an OFTSR student takes image= (low-resolution, PIL or [N, C, h, w] in [-1, 1])")
        if not 0.0 <= tau <= 1.0:
            raise ConfigError(f"tau must be in [0, 1], got {tau}")
        x = super_resolve(self.record, self.model, _low_res(image), tau, seed)
        return PipelineOutput(_images(x, output_type), 1)


def _low_res(image: Any) -> Tensor:
    """``[N, C, h, w]`` in [−1, 1] from a tensor as it is, or a PIL image / uint8 array ``[h, w(, C)]``."""
    if isinstance(image, Tensor):
        return image.float()
    a = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    a = a[:, :, None] if a.ndim == 2 else a
    if a.ndim != 3:
        raise ShapeError(f"image= is a PIL image, an [h, w(, C)] array or an [N, C, h, w] tensor, got {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]


def _images(x: Tensor, output_type: str) -> Any:
    if output_type == "latent":
        return x.cpu()
    x01 = ((x.detach().float().clamp(-1, 1) + 1) / 2).cpu()
    if output_type == "pt":
        return x01
    arr = x01.permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return arr
    from PIL import Image

    u8 = (arr * 255).round().astype(np.uint8)
    return [Image.fromarray(a[:, :, 0] if a.shape[-1] == 1 else a) for a in u8]
