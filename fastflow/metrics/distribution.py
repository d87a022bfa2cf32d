r"""Sample-based distances between point clouds (the 2-D toy and small feature sets).

* ``mmd_rbf``: unbiased squared MMD with a sum of RBF kernels at several bandwidths.
* ``sliced_wasserstein``: mean over random unit directions of the 1-D W2 distance.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mmd_rbf(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0)) -> float:
    x, y = x.double().flatten(1), y.double().flatten(1)
    n, m = len(x), len(y)

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def sliced_wasserstein(x: Tensor, y: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced W2 with equal-size quantile matching (``x``, ``y`` resampled to the smaller size)."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    n = min(len(x), len(y))
    q = torch.linspace(0, 1, n, dtype=torch.float64)
    px = torch.quantile((x @ dirs.to(x.device)).cpu(), q, dim=0)
    py = torch.quantile((y @ dirs.to(y.device)).cpu(), q, dim=0)
    return float((px - py).pow(2).mean(0).mean().sqrt())
