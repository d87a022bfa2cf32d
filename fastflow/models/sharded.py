"""Reading sharded (``torch.distributed.checkpoint``, DCP) checkpoints safely.

An FSDP2 run's checkpoint directory holds ``config.json`` and ``dcp/``: every rank's shards
(``__R_0.distcp``) and the metadata as JSON (``metadata.json``, :mod:`fastflow.models.dcp_metadata`;
DCP's own pickled ``.metadata`` only in checkpoints written before it). ``config.json`` records the
SHA-256 of every file in ``dcp/``, written after every rank finished; :func:`verify_sharded` refuses a
missing, extra or changed file. The digests sit beside the files they cover, so they catch damage, not
a hostile sender: what makes loading safe is that the metadata is validated field by field and built
by fastflow (a legacy pickle only through an exact-pair allow-list), pickled values are refused, and
the shards' tensors are read with ``torch.load(weights_only=True)``; nothing from the files is executed.

:func:`read_sharded` loads one part (``model``, ``ema``) as a whole state dict in one process, at
any world size the checkpoint was written with: the DCP reader reassembles the shards.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastflow.errors import CheckpointError
from fastflow.models.dcp_metadata import JSON_NAME, PICKLE_NAME, metadata_of, read_legacy
from fastflow.utils.io import file_digest, read_json

SHARDS = "dcp"


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


def read_metadata(shards: Path) -> Any:
    """The validated DCP ``Metadata`` of ``shards`` (``dir/dcp``): from ``metadata.json``, or from a
    legacy pickled ``.metadata`` through the exact-pair allow-list (:mod:`fastflow.models.dcp_metadata`)."""
    if (shards / JSON_NAME).is_file():
        path = shards / JSON_NAME
        return metadata_of(read_json(path, CheckpointError), str(path))
    if (shards / PICKLE_NAME).is_file():
        return read_legacy(shards / PICKLE_NAME)
    raise CheckpointError(f"{shards}: no {JSON_NAME} (incomplete sharded checkpoint)")


def reader(directory: str | Path) -> Any:
    """A DCP ``FileSystemReader`` for ``directory/dcp`` whose metadata is :func:`read_metadata`'s."""
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            meta = read_metadata(Path(self.path))
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
    _check_fits(storage.read_metadata(), state, d)
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            load(state, storage_reader=storage, no_dist=not distributed)
    except CheckpointException as e:  # DCP's wrapper of what a rank's read raised: bytes that do not decode
        failure = next(iter(e.failures.values()), None)  # (exception, traceback summary) per failed rank
        failure = failure[0] if isinstance(failure, tuple) else failure
        first = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
        raise CheckpointError(
            f"{d}: sharded checkpoint does not read ({type(failure).__name__}: {first[:300]})"
        ) from None


def _check_fits(meta: Any, state: dict[str, Any], d: Path) -> None:
    """Every tensor of ``state`` (nested dicts, keys joined by dots as DCP does) is in the checkpoint
    with the same global size and dtype."""
    def leaves(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, torch.Tensor]]:
        out = []
        for k, v in tree.items():
            out += leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
        return out

    stored = meta.state_dict_metadata
    for key, t in leaves(state):
        if key not in stored:
            raise CheckpointError(f"{d}: sharded checkpoint does not load into this model ({key} is missing)")
        want = stored[key]
        if tuple(want.size) != tuple(t.shape) or want.properties.dtype != t.dtype:
            raise CheckpointError(f"{d}: sharded checkpoint does not load into this model ({key} is "
                                  f"{want.properties.dtype} {list(want.size)}, the model's {t.dtype} {list(t.shape)})")


def read_sharded(
    directory: str | Path, part: str, model: nn.Module, digests: dict[str, str]
) -> dict[str, torch.Tensor]:
    """The whole ``part`` (``model`` or ``ema``) state dict of ``model``'s architecture, in one process."""
    state = {part: {k: torch.empty_like(v, device="cpu") for k, v in model.state_dict().items()}}
    load_parts(directory, state, digests)
    return state[part]
