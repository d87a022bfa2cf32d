r"""Super-resolution data (OFTSR): a high-resolution image ``x`` and its degraded version.

Degradation: :math:`y = \mathrm{down}_s(x) + \sigma_y n`, :math:`\mathrm{lq} = \mathrm{bicubic\_up}_s(y)`
with ``down`` bicubic (default) or average pooling; ``lq`` has the size of ``x`` and is the
model's condition image. Sources: any image dataset (``digits`` upscaled, an image folder,
``.npz``) or fixed patches of scikit-image's bundled sample images (no download).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fastflow.data.base import ArrayDataset, Batch, Dataset
from fastflow.errors import ConfigError, DataError

SKIMAGE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")


def degrade(x: Tensor, scale: int = 4, sigma_y: float = 0.0, mode: str = "bicubic",
            generator: torch.Generator | None = None) -> Tensor:
    """``lq = bicubic_up(down(x) + σ_y·n)`` at the size of ``x`` (``[B, C, H, W]`` in [−1, 1])."""
    if x.dim() != 4 or x.shape[-1] % scale or x.shape[-2] % scale:
        raise DataError(f"SR needs [B, C, H, W] images with H, W divisible by {scale}, got {tuple(x.shape)}")
    if mode == "bicubic":
        y = F.interpolate(x, scale_factor=1 / scale, mode="bicubic", align_corners=False, antialias=True)
    elif mode == "avgpool":
        y = F.avg_pool2d(x, scale)
    else:
        raise ConfigError(f"degradation mode must be bicubic or avgpool, got {mode!r}")
    if sigma_y > 0:
        y = y + sigma_y * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    return F.interpolate(y, scale_factor=scale, mode="bicubic", align_corners=False)


def skimage_patches(size: int = 32, stride: int | None = None, names: tuple[str, ...] = SKIMAGE_IMAGES) -> Tensor:
    """Non-overlapping ``size×size`` RGB patches of scikit-image's sample images, uint8."""
    try:
        from skimage import data as skdata
    except ImportError:
        raise DataError("the skimage SR source needs scikit-image (pip install scikit-image)") from None
    stride = stride or size
    out = []
    for name in names:
        img = torch.from_numpy(getattr(skdata, name)().copy())
        if img.dim() == 2:
            img = img[..., None].expand(-1, -1, 3)
        img = img[..., :3].permute(2, 0, 1)
        patches = img.unfold(1, size, stride).unfold(2, size, stride)  # [C, nh, nw, s, s]
        out.append(patches.permute(1, 2, 0, 3, 4).reshape(-1, 3, size, size))
    return torch.cat(out).contiguous()


class SRDataset(Dataset):
    """Pairs ``(x = HR, image = lq)`` from a source dataset; the degradation noise of sample
    ``i`` is seeded by ``(seed, i)`` so a sample is the same every time it is drawn."""

    def __init__(self, source: dict[str, Any] | str = "digits", scale: int = 4, sigma_y: float = 0.0,
                 mode: str = "bicubic", patch: int = 32, seed: int = 0) -> None:
        from fastflow.data import build_dataset

        if source == "skimage":
            self.base: Dataset = ArrayDataset(skimage_patches(patch), name="skimage patches")
        else:
            self.base = build_dataset({"name": source} if isinstance(source, str) else source)
        self.scale, self.sigma_y, self.mode, self.seed = scale, sigma_y, mode, seed
        degrade(self.base.get(torch.zeros(1, dtype=torch.long)).x, scale, 0.0, mode)  # validate sizes

    def __len__(self) -> int:
        return len(self.base)

    def get(self, indices: Tensor) -> Batch:
        hr = self.base.get(indices).x
        if self.sigma_y > 0:
            lq = torch.cat([degrade(hr[j:j + 1], self.scale, self.sigma_y, self.mode,
                                    torch.Generator().manual_seed(self.seed * 1_000_003 + int(i)))
                            for j, i in enumerate(indices.tolist())])
        else:
            lq = degrade(hr, self.scale, 0.0, self.mode)
        return Batch(hr, None, None, lq)
