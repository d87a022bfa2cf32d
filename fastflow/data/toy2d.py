"""2-D target distributions for the rectified-flow toy: noise ``N(0, I)`` → a mixture.

``gaussians``: ``modes`` Gaussians of std ``std`` evenly on a circle of radius ``radius``;
``moons``: scikit-learn's two moons (centred, scaled).
Generated with a fixed seed, so the dataset is the same everywhere.
"""

from __future__ import annotations

import math

import torch

from fastflow.data.base import ArrayDataset
from fastflow.errors import ConfigError


def sample_toy2d(kind: str, n: int, seed: int = 0, modes: int = 8, radius: float = 4.0,
                 std: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points [n, 2], component label [n])``."""
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussians":
        comp = torch.randint(0, modes, (n,), generator=g)
        ang = 2 * math.pi * comp.float() / modes
        centres = radius * torch.stack([ang.cos(), ang.sin()], 1)
        return centres + std * torch.randn(n, 2, generator=g), comp
    if kind == "moons":
        from sklearn.datasets import make_moons

        x, y = make_moons(n, noise=0.05, random_state=seed)
        pts = torch.from_numpy(x).float()
        return (pts - torch.tensor([0.5, 0.25])) * 2.5, torch.from_numpy(y).long()
    raise ConfigError(f"unknown toy2d kind {kind!r}; choose gaussians or moons")


class Toy2DDataset(ArrayDataset):
    def __init__(self, kind: str = "gaussians", n: int = 20_000, seed: int = 0, modes: int = 8,
                 radius: float = 4.0, std: float = 0.3) -> None:
        if n < 1 or modes < 1 or std < 0 or not 0 <= seed < 2**63:
            raise ConfigError(f"toy2d needs n >= 1, modes >= 1, std >= 0 and seed in [0, 2**63); got n={n}, "
                              f"modes={modes}, std={std}, seed={seed}")
        x, y = sample_toy2d(kind, n, seed, modes=modes, radius=radius, std=std)
        super().__init__(x, y, name=f"toy2d/{kind}")
