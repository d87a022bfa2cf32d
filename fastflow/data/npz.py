"""Arrays from an ``.npz`` file: images under ``x`` (or ``images``/``arr_0``), optional labels
under ``y`` (or ``labels``). Images may be ``[N, C, H, W]`` or ``[N, H, W, C]`` (C ≤ 4), uint8
(0…255) or float already in [−1, 1]; 2-D ``[N, D]`` float arrays are taken as points."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from fastflow.data.base import ArrayDataset
from fastflow.errors import DataError


def _pick(z: np.lib.npyio.NpzFile, names: tuple[str, ...]) -> np.ndarray | None:
    for n in names:
        if n in z.files:
            return z[n]
    return None


class NpzDataset(ArrayDataset):
    def __init__(self, path: str) -> None:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"npz file {path!r} does not exist")
        try:
            with np.load(p, allow_pickle=False) as z:
                x, y = _pick(z, ("x", "images", "arr_0")), _pick(z, ("y", "labels"))
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise DataError(f"{path}: unreadable npz ({e})") from None
        if x is None:
            raise DataError(f"{path}: no array named x, images or arr_0")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise DataError(f"{path}: images must be real numbers, got dtype {x.dtype}")
        if x.ndim < 2 or len(x) == 0:
            raise DataError(f"{path}: expected a non-empty [N, ...] array, got shape {x.shape}")
        if x.ndim == 4 and x.shape[-1] <= 4 < x.shape[1]:
            x = x.transpose(0, 3, 1, 2)
        if x.ndim not in (2, 4):
            raise DataError(f"{path}: expected [N, D] points or [N, C, H, W] images, got {x.shape}")
        if x.dtype != np.uint8:
            x = x.astype(np.float32)
            if not np.isfinite(x).all():
                raise DataError(f"{path}: data holds NaN or Inf values")
            if x.ndim == 4 and (x.min() < -1.001 or x.max() > 1.001):
                raise DataError(f"{path}: float images must lie in [-1, 1] "
                                f"(got [{x.min():.3g}, {x.max():.3g}]); store uint8 for 0…255")
        if y is not None and not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: labels must be integers, got dtype {y.dtype}")
        label = None if y is None else torch.from_numpy(np.asarray(y).astype(np.int64))
        super().__init__(torch.from_numpy(np.ascontiguousarray(x)), label, name=str(path))
