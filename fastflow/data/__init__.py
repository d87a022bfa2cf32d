"""Built-in datasets (nothing downloaded) and the resumable batch stream."""

from __future__ import annotations

import inspect
from typing import Any

from fastflow.data.base import ArrayDataset, Batch, BatchStream, Dataset
from fastflow.data.cifar10 import Cifar10Dataset
from fastflow.data.digits import DigitsDataset
from fastflow.data.folder import ImageFolderDataset
from fastflow.data.npz import NpzDataset
from fastflow.data.toy2d import Toy2DDataset
from fastflow.errors import ConfigError

DATASETS: dict[str, type[Dataset]] = {
    "digits": DigitsDataset,
    "toy2d": Toy2DDataset,
    "folder": ImageFolderDataset,
    "npz": NpzDataset,
    "cifar10": Cifar10Dataset,
}


def build_dataset(spec: dict[str, Any]) -> Dataset:
    """``{"name": "digits", ...kwargs}`` → dataset; unknown names or arguments raise ConfigError."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    cls = DATASETS[name]
    params = inspect.signature(cls.__init__).parameters
    unknown = [k for k in spec if k not in params or k == "self"]
    if unknown:
        raise ConfigError(f"dataset {name!r} has no option(s) {unknown}; it takes "
                          f"{[p for p in params if p != 'self']}")
    missing = [p.name for p in params.values() if p.default is p.empty and p.name != "self"
               and p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in spec]
    if missing:
        raise ConfigError(f"dataset {name!r} needs data.{missing[0]}")
    return cls(**spec)


__all__ = ["DATASETS", "ArrayDataset", "Batch", "BatchStream", "Dataset", "build_dataset"]
