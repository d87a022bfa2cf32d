"""CIFAR-10 from a local copy of the "python version" (``cifar-10-batches-py``); nothing is
downloaded. Those batch files are pickles: they are read with an unpickler that only admits
the numpy array reconstructors and builtin containers, never arbitrary classes."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastflow.data.base import ArrayDataset
from fastflow.errors import DataError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    try:
        d = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data, labels = d[b"data"], d[b"labels"]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    if data.shape[1:] != (3072,) or data.dtype != np.uint8 or len(labels) != len(data):
        raise DataError(f"{path}: unexpected CIFAR-10 batch layout {data.shape} {data.dtype}")
    return data, labels


class Cifar10Dataset(ArrayDataset):
    """``root`` holds ``data_batch_1`` … ``data_batch_5`` and ``test_batch``."""

    def __init__(self, root: str, split: str = "train") -> None:
        r = Path(root)
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        if split not in ("train", "test"):
            raise DataError(f"CIFAR-10 split must be train or test, got {split!r}")
        missing = [n for n in names if not (r / n).is_file()]
        if missing:
            raise DataError(f"CIFAR-10 not found: {r} lacks {', '.join(missing)} (download the "
                            "python version, extract it, and point data.root at cifar-10-batches-py)")
        parts = [_read_batch(r / n) for n in names]
        x = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(p[1]) for p in parts])
        super().__init__(torch.from_numpy(x), torch.from_numpy(y).long(), num_classes=10, name="cifar10")
