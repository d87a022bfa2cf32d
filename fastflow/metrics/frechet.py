r"""Fréchet distance between Gaussian fits of two feature sets (the "F" of FID):

.. math:: \mathrm{FD} = \lVert\mu_a-\mu_b\rVert^2 + \mathrm{tr}\big(\Sigma_a+\Sigma_b
          - 2(\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2})^{1/2}\big)

computed in float64 with symmetric eigendecompositions (no scipy needed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastflow.errors import ShapeError


def _sqrtm_psd(m: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    f = features.double()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ShapeError(f"features must be [N >= 2, D], got {tuple(features.shape)}")
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def frechet_distance(a: Tensor | tuple[Tensor, Tensor], b: Tensor | tuple[Tensor, Tensor]) -> float:
    """FD between feature sets ``[N, D]`` (or precomputed ``(mu, sigma)`` pairs)."""
    mu_a, s_a = a if isinstance(a, tuple) else gaussian_stats(a)
    mu_b, s_b = b if isinstance(b, tuple) else gaussian_stats(b)
    if mu_a.shape != mu_b.shape:
        raise ShapeError(f"feature dims differ: {tuple(mu_a.shape)} vs {tuple(mu_b.shape)}")
    r = _sqrtm_psd(s_a)
    cross = _sqrtm_psd(r @ s_b @ r)
    fd = (mu_a - mu_b).pow(2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * torch.trace(cross)
    return float(fd.clamp(min=0))
