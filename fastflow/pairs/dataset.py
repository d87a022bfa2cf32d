"""``PairDataset``: teacher pairs read through memory maps, never loaded whole into RAM.

A safetensors file is an 8-byte header length, a JSON header with each tensor's dtype, shape
and byte offsets, then the raw data; each tensor becomes a read-only ``numpy.memmap``. Every
shard's data is checked against the SHA-256 in its metadata when the dataset opens (one
sequential read of the pairs); shards written before digests load with a one-time warning.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np
import torch

from fastflow.data.base import Batch, Dataset
from fastflow.errors import DataError
from fastflow.pairs.writer import MANIFEST, tensors_digest
from fastflow.utils.io import read_json

log = logging.getLogger("fastflow.pairs")
_warned_legacy: set[Path] = set()

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def memmap_safetensors(path: Path) -> dict[str, np.memmap]:
    """Map every tensor of a safetensors file (bf16 is not mappable by numpy: store F32/F16),
    checked against the ``sha256`` of its metadata."""
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable shard ({e})") from None
    out = {}
    size = path.stat().st_size
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise DataError(f"{path}: tensor {name} has dtype {info['dtype']}, not memory-mappable")
        start, end = info["data_offsets"]
        if 8 + header_len + end > size:
            raise DataError(f"{path}: truncated shard")
        out[name] = np.memmap(path, dtype=_DTYPES[info["dtype"]], mode="r",
                              offset=8 + header_len + start, shape=tuple(info["shape"]))
    want = (header.get("__metadata__") or {}).get("sha256")
    if want is None:
        if path.parent not in _warned_legacy:
            _warned_legacy.add(path.parent)
            log.warning("%s: shards written before SHA-256 digests; their data cannot be verified", path.parent)
    elif tensors_digest(out) != want:
        raise DataError(f"{path}: SHA-256 mismatch with the shard's metadata (corrupted or modified file)")
    return out


class PairDataset(Dataset):
    """Pairs ``(z, x)`` (+ labels) from ``fastflow pairs``; ``get`` returns ``Batch(x, label, z)``."""

    def __init__(self, root: str) -> None:
        r = Path(root)
        mpath = r / MANIFEST
        if not mpath.is_file():
            raise DataError(f"{root}: no {MANIFEST} (generate pairs with `fastflow pairs`)")
        self.manifest = read_json(mpath, DataError)
        if not self.manifest.get("complete"):
            raise DataError(f"{root}: pair generation has not finished; rerun `fastflow pairs` "
                            "with the same arguments to complete it")
        self.shards = [memmap_safetensors(r / s) for s in self.manifest["shards"]]
        counts = [len(s["z"]) for s in self.shards]
        if counts != self.manifest["shard_counts"]:
            raise DataError(f"{root}: shard sizes {counts} disagree with the manifest")
        self.offsets = np.cumsum([0, *counts])
        self.num_classes = int(self.manifest["settings"].get("num_classes", 0))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, indices: torch.Tensor) -> Batch:
        idx = indices.numpy()
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        xs, zs, ls = [], [], []
        order = np.argsort(shard, kind="stable")
        for s in np.unique(shard):
            rows = idx[shard == s] - self.offsets[s]
            m = self.shards[s]
            xs.append(np.asarray(m["x"][rows], dtype=np.float32))
            zs.append(np.asarray(m["z"][rows], dtype=np.float32))
            if "label" in m:
                ls.append(np.asarray(m["label"][rows], dtype=np.int64))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        x = torch.from_numpy(np.concatenate(xs)[inverse])
        z = torch.from_numpy(np.concatenate(zs)[inverse])
        label = torch.from_numpy(np.concatenate(ls)[inverse]) if ls else None
        return Batch(x, label, z)
