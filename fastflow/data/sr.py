r"""Super-resolution data (OFTSR): a high-resolution image ``x`` and its degraded version.

Degradation: :math:`y = \mathrm{down}_s(x) + \sigma_y n`, :math:`\mathrm{lq} = \mathrm{bicubic\_up}_s(y)`
with ``down`` bicubic (default) or average pooling; ``lq`` has the size of ``x`` and is the
model's condition image. Source: any image dataset, e.g. ``digits``, ``photos`` (random crops of
scikit-image's bundled photographs, with held-out photographs for evaluation), an image folder or
``.npz``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fastflow.data import build_dataset
from fastflow.data.base import Batch, Dataset
from fastflow.errors import ConfigError, DataError
from fastflow.utils.seeding import stream_seed

#: the super-resolution factor when a config names none (OFTSR's ×4)
DEFAULT_SCALE = 4


def degrade(x: Tensor, scale: int = DEFAULT_SCALE, sigma_y: float = 0.0, mode: str = "bicubic",
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


class SRDataset(Dataset):
    """Pairs ``(x = HR, image = lq)`` from a source dataset; the degradation noise of sample
    ``i`` is seeded by ``(seed, i)`` so a sample is the same every time it is drawn."""

    def __init__(self, source: dict[str, Any] | str = "digits", scale: int = DEFAULT_SCALE, sigma_y: float = 0.0,
                 mode: str = "bicubic", seed: int = 0) -> None:
        if not 1 <= scale <= 64 or not sigma_y >= 0 or not 0 <= seed < 2**63:
            raise ConfigError(f"sr needs data.scale in [1, 64], data.sigma_y >= 0 and data.seed in [0, 2**63); got "
                              f"{scale}, {sigma_y}, {seed}")
        self.base: Dataset = build_dataset({"name": source} if isinstance(source, str) else source)
        self.scale, self.sigma_y, self.mode, self.seed = scale, sigma_y, mode, seed
        degrade(self.base.get(torch.zeros(1, dtype=torch.long)).x, scale, 0.0, mode)  # validate sizes

    def __len__(self) -> int:
        return len(self.base)

    def get(self, indices: Tensor) -> Batch:
        hr = self.base.get(indices).x
        if self.sigma_y > 0:
            lq = torch.cat([degrade(hr[j:j + 1], self.scale, self.sigma_y, self.mode,
                                    torch.Generator().manual_seed(stream_seed(self.seed, int(i))))
                            for j, i in enumerate(indices.tolist())])
        else:
            lq = degrade(hr, self.scale, 0.0, self.mode)
        return Batch(hr, None, None, lq)
