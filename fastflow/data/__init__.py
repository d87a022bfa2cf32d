"""Built-in datasets (nothing downloaded) and the resumable batch stream."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from fastflow.data.base import ArrayDataset, Batch, BatchStream, Dataset
from fastflow.errors import ConfigError

#: name → "module:Class", imported on use (``pairs`` lives above this package).
DATASETS: dict[str, str] = {
    "digits": "fastflow.data.digits:DigitsDataset",
    "toy2d": "fastflow.data.toy2d:Toy2DDataset",
    "folder": "fastflow.data.folder:ImageFolderDataset",
    "npz": "fastflow.data.npz:NpzDataset",
    "cifar10": "fastflow.data.cifar10:Cifar10Dataset",
    "pairs": "fastflow.pairs.dataset:PairDataset",
    "sr": "fastflow.data.sr:SRDataset",
    "photos": "fastflow.data.photos:PhotoCrops",
}


def dataset_class(name: str) -> type[Dataset]:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    module, cls = DATASETS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_dataset(spec: dict[str, Any]) -> Dataset:
    """``{"name": "digits", ...kwargs}`` → dataset; unknown names or arguments raise ConfigError."""
    spec = dict(spec)
    cls = dataset_class(spec.pop("name", None))
    params = inspect.signature(cls.__init__).parameters
    unknown = [k for k in spec if k not in params or k == "self"]
    name = cls.__name__
    if unknown:
        raise ConfigError(f"dataset {name} has no option(s) {unknown}; it takes "
                          f"{[p for p in params if p != 'self']}")
    missing = [p.name for p in params.values() if p.default is p.empty and p.name != "self"
               and p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in spec]
    if missing:
        raise ConfigError(f"dataset {name} needs data.{missing[0]}")
    return cls(**spec)


__all__ = ["DATASETS", "ArrayDataset", "Batch", "BatchStream", "Dataset", "build_dataset"]
