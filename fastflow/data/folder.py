"""An image folder: every PNG/JPEG/BMP/WebP below ``root``, centre-cropped and resized.

Class labels come from the first-level sub-folder names when there are at least two of them.
Images are decoded lazily, per batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fastflow.data.base import Batch, Dataset
from fastflow.errors import ConfigError, DataError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def decode_image(path: str | Path, channels: int) -> np.ndarray:
    """Decode an image file as ``[H, W, channels]`` uint8 (grey or RGB; alpha dropped)."""
    try:
        with Image.open(path) as im:
            return _hwc(np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


def load_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """Decode, centre-crop to a square, resize to ``size``; ``[C, size, size]`` uint8."""
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            im = im.resize((size, size), Image.Resampling.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None
    return torch.from_numpy(_hwc(arr).copy()).permute(2, 0, 1)


def _hwc(arr: np.ndarray) -> np.ndarray:
    return arr[:, :, None] if arr.ndim == 2 else arr


class ImageFolderDataset(Dataset):
    def __init__(self, root: str, resolution: int = 32, channels: int = 3) -> None:
        if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= 4096:
            raise ConfigError(f"data.resolution must be an integer in [1, 4096], got {resolution!r}")
        if channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 or 3, got {channels!r}")
        r = Path(root)
        if not r.is_dir():
            raise DataError(f"image folder {root!r} does not exist")
        self.files = sorted(p for p in r.rglob("*") if p.suffix.lower() in EXTENSIONS)
        if not self.files:
            raise DataError(f"no images ({', '.join(sorted(EXTENSIONS))}) found under {root!r}")
        self.resolution, self.channels = resolution, channels
        classes = sorted({p.relative_to(r).parts[0] for p in self.files if len(p.relative_to(r).parts) > 1})
        if len(classes) >= 2 and all(len(p.relative_to(r).parts) > 1 for p in self.files):
            index = {c: i for i, c in enumerate(classes)}
            self.labels = torch.tensor([index[p.relative_to(r).parts[0]] for p in self.files])
            self.num_classes = len(classes)
        else:
            self.labels = None

    def __len__(self) -> int:
        return len(self.files)

    def get(self, indices: torch.Tensor) -> Batch:
        x = torch.stack([load_image(self.files[i], self.resolution, self.channels)
                         for i in indices.tolist()])
        return Batch(x.float() / 127.5 - 1.0, None if self.labels is None else self.labels[indices])
