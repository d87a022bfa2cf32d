"""Reading sharded (``torch.distributed.checkpoint``, DCP) checkpoints safely.

An FSDP2 run's checkpoint directory holds ``config.json`` and ``dcp/``: every rank's shards
(``__R_0.distcp``) and DCP's ``.metadata``. ``config.json`` records the SHA-256 of every file in
``dcp/``, written after every rank finished; :func:`verify_sharded` refuses a missing, extra or
changed file. DCP itself unpickles its metadata and any non-tensor value; here the metadata goes
through an unpickler that only builds DCP's own record types, and a checkpoint holding a pickled
value is refused (fastflow writes tensors only), so nothing from the file is executed.

:func:`read_sharded` loads one part (``model``, ``ema``) as a whole state dict in one process, at
any world size the checkpoint was written with: the DCP reader reassembles the shards.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastflow.errors import CheckpointError
from fastflow.utils.io import file_digest

SHARDS = "dcp"
_SAFE_MODULES = {"torch.distributed.checkpoint.metadata"}
_SAFE_NAMES = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
               ("pathlib", "PurePosixPath"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _SAFE_MODULES or (module, name) in _SAFE_NAMES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(f"DCP metadata holds a {module}.{name} object; refused to unpickle it")


def is_sharded(directory: str | Path) -> bool:
    return (Path(directory) / SHARDS).is_dir()


def shard_files(directory: str | Path) -> list[str]:
    """The files of ``directory/dcp`` as ``dcp/NAME`` (the keys of the digests)."""
    root = Path(directory) / SHARDS
    return sorted(f"{SHARDS}/{p.name}" for p in root.iterdir() if p.is_file())


def verify_sharded(directory: str | Path, digests: dict[str, str]) -> None:
    """Every file of ``dcp/`` present, none added, each matching its SHA-256."""
    d = Path(directory)
    listed = {k for k in digests if k.startswith(f"{SHARDS}/")}
    found = set(shard_files(d))
    if not listed:
        raise CheckpointError(f"{d}: config.json lists no digests for {SHARDS}/ (incomplete checkpoint)")
    if listed - found:
        raise CheckpointError(f"{d}: sharded checkpoint is incomplete: {sorted(listed - found)[0]} is missing")
    if found - listed:
        raise CheckpointError(f"{d}: {sorted(found - listed)[0]} is not listed in config.json's digests")
    for name in sorted(listed):
        if file_digest(d / name) != digests[name]:
            raise CheckpointError(f"{d / name}: SHA-256 mismatch with config.json (truncated, corrupted or "
                                  "modified shard)")


def reader(directory: str | Path) -> Any:
    """A DCP ``FileSystemReader`` for ``directory/dcp`` that reads metadata through the restricted
    unpickler and refuses pickled (non-tensor) values."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            try:
                with open(Path(self.path) / ".metadata", "rb") as f:
                    meta = _MetadataUnpickler(f).load()
            except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError) as e:
                raise CheckpointError(f"{self.path}/.metadata: unreadable DCP metadata ({e})") from None
            pickled = [k for k, v in meta.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)]
            if pickled:
                raise CheckpointError(f"{self.path}: holds pickled values ({pickled[0]}); refused to unpickle them")
            if getattr(meta, "storage_meta", None) is None:  # what FileSystemReader.read_metadata does
                meta.storage_meta = StorageMeta()
            meta.storage_meta.load_id = self.load_id
            return meta

    return SafeReader(Path(directory) / SHARDS)


def load_parts(directory: str | Path, state: dict[str, Any], digests: dict[str, str],
               distributed: bool = False) -> None:
    """Fill ``state`` (``{"model": {...}, "ema": {...}, ...}``, tensors or DTensors) in place from
    the checkpoint's shards, after checking them against ``digests`` (config.json's ``sha256``)."""
    from torch.distributed.checkpoint import load

    d = Path(directory)
    verify_sharded(d, digests)
    storage = reader(d)
    storage.read_metadata()  # refuses pickled values here, in one line (inside load it is wrapped)
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            load(state, storage_reader=storage, no_dist=not distributed)
    except Exception as e:  # a shard whose tensors do not match the model, a truncated file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{d}: sharded checkpoint does not load into this model ({first[:300]})") from None


def read_sharded(directory: str | Path, part: str, model: nn.Module, digests: dict[str, str]) -> dict[str, torch.Tensor]:
    """The whole ``part`` (``model`` or ``ema``) state dict of ``model``'s architecture, in one process."""
    state = {part: {k: torch.empty_like(v, device="cpu") for k, v in model.state_dict().items()}}
    load_parts(directory, state, digests)
    return state[part]
