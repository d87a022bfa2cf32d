"""Random crops of the photographs that ship inside scikit-image (nothing downloaded).

Two disjoint sets of photographs: ``split="train"`` crops the training photographs, ``split="eval"``
the held-out ones (a cat and a cup of coffee: fur and objects no training crop has seen). Crop
``i`` — its photograph (each equally likely), position and horizontal flip — is a pure
function of ``(seed, i)``, so a dataset of ``count`` crops is the same on every machine and run.
Photographs are first reduced by ``downscale`` (area averaging) so a small crop holds structure,
not one flat patch of sky. Grey photographs are repeated to three channels.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fastflow.data.base import Batch, Dataset
from fastflow.errors import ConfigError, MissingBackendError
from fastflow.utils.seeding import stream_seed

#: scikit-image sample images (``skimage.data`` functions) that are photographs and are bundled.
TRAIN_PHOTOS = ("astronaut", "rocket", "motorcycle_left", "immunohistochemistry", "retina", "hubble_deep_field",
                "camera", "coins", "grass", "gravel", "brick", "moon")
EVAL_PHOTOS = ("chelsea", "coffee")


def load_photos(names: tuple[str, ...], downscale: int = 1) -> list[Tensor]:
    """The named scikit-image photographs as ``[3, H, W]`` uint8, reduced ``downscale``×."""
    try:
        from skimage import data as skdata
    except ImportError:
        raise MissingBackendError("the photos dataset needs scikit-image (pip install scikit-image)") from None
    out = []
    for name in names:
        img = np.array(skdata.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(skdata, name)())
        img = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]
        if downscale > 1:
            pil = Image.fromarray(img.astype(np.uint8))
            img = np.asarray(pil.resize((pil.width // downscale, pil.height // downscale), Image.Resampling.BOX))
        out.append(torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous())
    return out


class PhotoCrops(Dataset):
    """``count`` random ``size×size`` RGB crops of scikit-image's photographs, in [−1, 1]."""

    def __init__(self, size: int = 32, split: str = "train", count: int = 20000, downscale: int = 2,
                 seed: int = 0) -> None:
        if split not in ("train", "eval"):
            raise ConfigError(f"photos: split must be train or eval, got {split!r}")
        if not isinstance(size, int) or size < 4 or not isinstance(count, int) or count < 1:
            raise ConfigError(f"photos: need size >= 4 and count >= 1, got size={size!r}, count={count!r}")
        if size > 4096 or not 0 <= seed < 2**63:
            raise ConfigError(f"photos: need size <= 4096 and seed in [0, 2**63), got size={size}, seed={seed}")
        if not isinstance(downscale, int) or downscale < 1:
            raise ConfigError(f"photos: downscale must be an integer >= 1, got {downscale!r}")
        self.photos = load_photos(TRAIN_PHOTOS if split == "train" else EVAL_PHOTOS, downscale)
        small = [p.shape[1:] for p in self.photos if min(p.shape[1:]) < size]
        if small:
            raise ConfigError(f"photos: crop size {size} exceeds a photograph of {tuple(small[0])} "
                              f"(downscale {downscale})")
        self.size, self.count, self.seed = size, count, seed

    def __len__(self) -> int:
        return self.count

    def crop(self, i: int) -> Tensor:
        """Crop ``i`` as ``[3, size, size]`` uint8."""
        g = torch.Generator().manual_seed(stream_seed(self.seed, i))
        photo = self.photos[int(torch.randint(0, len(self.photos), (1,), generator=g))]
        h, w = photo.shape[1:]
        y = int(torch.randint(0, h - self.size + 1, (1,), generator=g))
        x = int(torch.randint(0, w - self.size + 1, (1,), generator=g))
        c = photo[:, y:y + self.size, x:x + self.size]
        return c.flip(-1) if bool(torch.rand(1, generator=g) < 0.5) else c

    def get(self, indices: Tensor) -> Batch:
        x = torch.stack([self.crop(int(i)) for i in indices.tolist()])
        return Batch(x.float() / 127.5 - 1.0)
