r"""Super-resolution metrics for images in [−1, 1] (data range 2).

* PSNR :math:`= 10\log_{10}(2^2/\mathrm{MSE})`, per image.
* SSIM (Wang et al. 2004) on the images mapped to [0, 1] (SSIM's luminance term assumes
  non-negative intensities): 11×11 Gaussian window, σ = 1.5, :math:`C_1 = 0.01^2`,
  :math:`C_2 = 0.03^2`; channels averaged.
* High-frequency energy ratio (a realism proxy): energy of the Laplacian of the output over
  that of the reference HR image; blurry (posterior-mean) outputs score well below 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastflow.errors import ShapeError
from fastflow.utils.images import psnr_db


def _check(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape or a.dim() != 4:
        raise ShapeError(f"SR metrics need two [B, C, H, W] tensors of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    return a.double(), b.double()


def psnr(x: Tensor, ref: Tensor) -> Tensor:
    """Per-image PSNR in dB ``[B]``."""
    x, ref = _check(x, ref)
    mse = (x - ref).pow(2).flatten(1).mean(1)
    return psnr_db(mse.clamp(min=1e-20))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g /= g.sum()
    return g[:, None] * g[None, :]


def ssim(x: Tensor, ref: Tensor, window: int = 11) -> Tensor:
    """Per-image mean SSIM ``[B]`` ("valid" windows; images smaller than the window use a
    window of their size)."""
    x, ref = _check(x, ref)
    x, ref = (x + 1) / 2, (ref + 1) / 2
    c = x.shape[1]
    size = min(window, x.shape[-1], x.shape[-2])
    w = _gaussian_window(size, 1.5 * size / 11).to(x.device).expand(c, 1, size, size)
    conv = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731
    mu_x, mu_y = conv(x), conv(ref)
    sxx = conv(x * x) - mu_x**2
    syy = conv(ref * ref) - mu_y**2
    sxy = conv(x * ref) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def hf_energy_ratio(x: Tensor, ref: Tensor) -> float:
    """``E|∇²x|² / E|∇²ref|²`` over the batch (1 = as much fine detail as the reference)."""
    x, ref = _check(x, ref)
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    k = lap.to(x.device).expand(x.shape[1], 1, 3, 3)
    e = lambda t: F.conv2d(t, k, groups=t.shape[1]).pow(2).mean()  # noqa: E731
    return float(e(x) / e(ref).clamp(min=1e-20))


def sr_scores(x: Tensor, ref: Tensor) -> dict[str, float]:
    """Batch means of PSNR and SSIM, and the high-frequency energy ratio."""
    return {"psnr": float(psnr(x, ref).mean()), "ssim": float(ssim(x, ref).mean()),
            "hf_ratio": hf_energy_ratio(x, ref)}
