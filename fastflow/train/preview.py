"""Periodic sample grids during training, from fixed inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.data import Dataset
from fastflow.flow.sample import generate
from fastflow.models.presets import model_kind, viewable
from fastflow.train.config import TrainConfig
from fastflow.utils.images import save_samples


class PreviewGrids:
    """Fixed inputs for periodic grids, so grids are comparable across steps: noise (and
    labels), or what the objective's ``sample_inputs(batch)`` makes from a fixed data batch
    (e.g. the noised degraded images of super-resolution)."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, data: Dataset, objective: Any,
                 device: torch.device) -> None:
        n = cfg.train.sample_n
        self.steps = objective.preview_steps or cfg.train.sample_steps  # a one-step student at one step
        self.z: Tensor | None = None
        self.objective = objective
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            made = objective.sample_inputs(data.get(torch.arange(min(n, len(data)))).to(device))
            if made is not None:
                self.z, self.cond = made
            elif model_kind(model.config) != "image":
                self.z = torch.randn(n, *data.sample_shape).to(device)
                k = model.config.num_classes
                self.cond = (torch.arange(n) % k).to(device) if k else None
        self.reference = data.get(torch.arange(min(len(data), 2000))).x if data_is_points(data) else None

    def __call__(self, model: nn.Module, path: Path, step: int, save: bool = True) -> None:
        """Sample and (when ``save``) write the grid; under FSDP2 every rank samples, rank 0 saves."""
        if self.z is None:  # the objective defines no preview for an image-conditioned model
            return
        own = self.objective.preview(model, self.z, self.cond)  # e.g. OFTSR's one-step map at a knob
        x, how = own if own is not None else (generate(model, self.z, "euler", self.steps, cond=self.cond).x,
                                               f"Euler {self.steps} (NFE {self.steps})")
        if save:
            save_samples(viewable(model, x), path, self.reference, title=f"step {step}, {how}")


def data_is_points(data: Dataset) -> bool:
    return len(data.sample_shape) == 1
