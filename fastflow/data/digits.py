"""scikit-learn's bundled 8×8 digits (1,797 images), upsampled to 16×16, in [−1, 1], with labels."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastflow.data.base import ArrayDataset
from fastflow.errors import ConfigError, DataError


def _digits_file() -> Path:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing scikit-learn (whose
    import takes ~2 s; every training start and every DDP/FSDP2 rank would pay it)."""
    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [Path(r) / "datasets" / "data" / "digits.csv.gz" for r in roots]
    if not found or not found[0].is_file():
        raise DataError("the digits data ship with scikit-learn: pip install scikit-learn")
    return found[0]


def digits_tensors(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, 1, size, size] in [−1, 1], labels [N])`` — ``sklearn.datasets.load_digits``'s."""
    data = np.loadtxt(_digits_file(), delimiter=",")
    x = torch.from_numpy(data[:, :-1].reshape(-1, 1, 8, 8)).float() / 16.0  # [N, 1, 8, 8] in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1), torch.from_numpy(data[:, -1].astype(np.int64))


class DigitsDataset(ArrayDataset):
    def __init__(self, size: int = 16) -> None:
        if not 1 <= size <= 1024:
            raise ConfigError(f"data.size must be in [1, 1024] (the digits are 8×8, resized), got {size}")
        x, y = digits_tensors(size)
        super().__init__(x, y, num_classes=10, name="digits")
