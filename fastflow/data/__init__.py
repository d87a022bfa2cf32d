"""Built-in datasets (nothing downloaded) and the resumable batch stream."""

from __future__ import annotations

import importlib
from typing import Any

from fastflow.data.base import ArrayDataset, Batch, BatchStream, Dataset
from fastflow.errors import ConfigError
from fastflow.utils.schema import check_kwargs

#: name → "module:Class", imported on use.
DATASETS: dict[str, str] = {
    "digits": "fastflow.data.digits:DigitsDataset",
    "toy2d": "fastflow.data.toy2d:Toy2DDataset",
    "folder": "fastflow.data.folder:ImageFolderDataset",
    "npz": "fastflow.data.npz:NpzDataset",
    "cifar10": "fastflow.data.cifar10:Cifar10Dataset",
    "pairs": "fastflow.data.pairs:PairDataset",
    "sr": "fastflow.data.sr:SRDataset",
    "photos": "fastflow.data.photos:PhotoCrops",
}


def dataset_class(name: str) -> type[Dataset]:
    if not isinstance(name, str) or name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    module, cls = DATASETS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def dataset_options(spec: dict[str, Any]) -> tuple[type[Dataset], dict[str, Any]]:
    """The dataset class of ``spec["name"]`` and the other keys checked against its constructor's
    signature and annotations (unknown, missing and mistyped options raise ConfigError)."""
    spec = dict(spec)
    cls = dataset_class(spec.pop("name", None))
    return cls, check_kwargs(cls.__init__, spec, "data.", f"dataset {cls.__name__}")


def dataset_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """A data section with every constructor default filled in (``{"name": "digits"}`` and
    ``{"name": "digits", "size": 16}`` are one dataset); checked like :func:`dataset_options`."""
    import inspect

    cls, kwargs = dataset_options(spec)
    bound = inspect.signature(cls.__init__).bind_partial(None, **kwargs)
    bound.apply_defaults()
    return {"name": spec.get("name"), **{k: v for k, v in list(bound.arguments.items())[1:]}}


def build_dataset(spec: dict[str, Any]) -> Dataset:
    """``{"name": "digits", ...kwargs}`` → dataset; unknown names or arguments raise ConfigError."""
    cls, kwargs = dataset_options(spec)
    return cls(**kwargs)


__all__ = [
    "DATASETS",
    "dataset_class",
    "dataset_options",
    "dataset_settings",
    "ArrayDataset",
    "Batch",
    "BatchStream",
    "Dataset",
    "build_dataset",
]
