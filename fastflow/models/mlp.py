"""A small MLP velocity field ``v_θ(x, t)`` for low-dimensional data (the 2-D toy); with
``times = 2`` the average velocity ``u_θ(x, t, t_end)`` (MeanFlow), the interval length embedded
like the time and added."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.errors import ConfigError, ShapeError
from fastflow.models.layers import interval_length, timestep_embedding
from fastflow.utils.schema import MAX_SIZE, build, check_sizes


@dataclass
class MLPConfig:
    dim: int = 2
    hidden: int = 256
    depth: int = 3
    t_dim: int = 64
    t_scale: float = 999.0
    num_classes: int = 0
    times: int = 1  # 2: u(x, t, t_end), the average velocity over [t, t_end] (MeanFlow)

    def __post_init__(self) -> None:
        if self.dim < 1 or self.hidden < 1 or self.depth < 1 or self.t_dim < 2:
            raise ConfigError(f"invalid MLP config: dim, hidden, depth must be >= 1 and t_dim >= 2: {self}")
        if self.t_scale <= 0 or self.num_classes < 0 or self.times not in (1, 2):
            raise ConfigError(f"invalid MLP config: t_scale must be > 0, num_classes >= 0, times 1 or 2: {self}")
        check_sizes(self, {"dim": MAX_SIZE, "hidden": MAX_SIZE, "t_dim": MAX_SIZE, "num_classes": MAX_SIZE,
                           "depth": 256}, "MLP")

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
        self.interval_mlp = nn.Sequential(nn.Linear(c.t_dim, c.hidden), nn.SiLU()) if c.times == 2 else None
        self.label_emb = nn.Embedding(c.num_classes + 1, c.hidden) if c.num_classes else None
        layers: list[nn.Module] = [nn.Linear(c.dim + c.hidden, c.hidden), nn.SiLU()]
        for _ in range(c.depth - 1):
            layers += [nn.Linear(c.hidden, c.hidden), nn.SiLU()]
        layers.append(nn.Linear(c.hidden, c.dim))
        self.net = nn.Sequential(*layers)

    def null_cond(self, cond: Tensor | None) -> Tensor | None:
        return None if cond is None else cond.new_full(cond.shape, self.config.num_classes)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, t_end: Tensor | None = None) -> Tensor:
        c = self.config
        if x.dim() != 2 or x.shape[1] != c.dim:
            raise ShapeError(f"x must be [B, {c.dim}], got {tuple(x.shape)}")
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        h = self.t_mlp(timestep_embedding(t * c.t_scale, c.t_dim).to(x.dtype))
        span = interval_length(t, t_end, c.times)
        if span is not None:
            h = h + self.interval_mlp(timestep_embedding(span * c.t_scale, c.t_dim).to(x.dtype))
        if self.label_emb is not None:
            if cond is None:
                cond = x.new_full((x.shape[0],), self.config.num_classes, dtype=torch.long)
            h = h + self.label_emb(cond)
        elif cond is not None:
            raise ShapeError("this model takes no condition")
        return self.net(torch.cat([x, h], dim=1))
