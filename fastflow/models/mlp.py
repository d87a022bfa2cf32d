"""A small MLP velocity field ``v_θ(x, t)`` for low-dimensional data (the 2-D toy)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.errors import ConfigError, ShapeError
from fastflow.models.layers import timestep_embedding
from fastflow.utils.schema import build


@dataclass
class MLPConfig:
    dim: int = 2
    hidden: int = 256
    depth: int = 3
    t_dim: int = 64
    t_scale: float = 999.0
    num_classes: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1 or self.hidden < 1 or self.depth < 1 or self.t_dim < 2:
            raise ConfigError(f"invalid MLP config: dim, hidden, depth must be >= 1 and t_dim >= 2: {self}")
        if self.t_scale <= 0 or self.num_classes < 0:
            raise ConfigError(f"invalid MLP config: t_scale must be > 0 and num_classes >= 0: {self}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MLPConfig:
        return build(cls, d, "model.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MLP(nn.Module):
    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = c = config
        self.t_mlp = nn.Sequential(nn.Linear(c.t_dim, c.hidden), nn.SiLU())
        self.label_emb = nn.Embedding(c.num_classes + 1, c.hidden) if c.num_classes else None
        layers: list[nn.Module] = [nn.Linear(c.dim + c.hidden, c.hidden), nn.SiLU()]
        for _ in range(c.depth - 1):
            layers += [nn.Linear(c.hidden, c.hidden), nn.SiLU()]
        layers.append(nn.Linear(c.hidden, c.dim))
        self.net = nn.Sequential(*layers)

    def null_cond(self, cond: Tensor | None) -> Tensor | None:
        return None if cond is None else cond.new_full(cond.shape, self.config.num_classes)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.config.dim:
            raise ShapeError(f"x must be [B, {self.config.dim}], got {tuple(x.shape)}")
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        h = self.t_mlp(timestep_embedding(t * self.config.t_scale, self.config.t_dim).to(x.dtype))
        if self.label_emb is not None:
            if cond is None:
                cond = x.new_full((x.shape[0],), self.config.num_classes, dtype=torch.long)
            h = h + self.label_emb(cond)
        elif cond is not None:
            raise ShapeError("this model takes no condition")
        return self.net(torch.cat([x, h], dim=1))
