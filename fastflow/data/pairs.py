"""Teacher pairs on disk: the shard format (``fastflow.pairs`` writes it) and ``PairDataset``, which
reads the pairs through memory maps, never loaded whole into RAM.

A safetensors file is an 8-byte header length, a JSON header with each tensor's dtype, shape
and byte offsets, then the raw data; each tensor becomes a read-only ``numpy.memmap``. Every
shard's data is checked against the SHA-256 in its metadata when the dataset opens (one
sequential read of the pairs); shards written before digests load with a one-time warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastflow.data.base import Batch, Dataset
from fastflow.errors import DataError
from fastflow.utils.io import read_json

log = logging.getLogger("fastflow.pairs")
_warned_legacy: set[Path] = set()

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
MANIFEST = "manifest.json"
SHARD_NAME = re.compile(r"shard-\d{5,}\.safetensors")
#: safetensors' own bound on a header's size (100 MB)
MAX_HEADER = 100_000_000


def tensors_digest(arrays: dict[str, Any]) -> str:
    """SHA-256 over the arrays' bytes in name order: stored in a shard's own metadata (written
    inside the same atomic rename) and recomputed from the memory maps by ``PairDataset``."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(memoryview(np.ascontiguousarray(arrays[name])).cast("B"))
    return h.hexdigest()


def _tensor_info(path: Path, name: str, info: object, data_len: int) -> tuple[np.dtype, tuple[int, ...], int]:
    """A header entry's dtype, shape and start offset, checked: known dtype, non-negative integer
    shape, offsets inside the data and exactly the shape's size."""
    ok = isinstance(info, dict) and info.get("dtype") in _DTYPES and isinstance(info.get("shape"), list) \
        and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2 \
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in [*info["shape"],
                                                                                   *info["data_offsets"]])
    if not ok:
        what = info.get("dtype") if isinstance(info, dict) else info
        raise DataError(f"{path}: tensor {name!r} has a malformed header entry or a dtype numpy cannot map ({what!r})")
    dtype = np.dtype(_DTYPES[info["dtype"]])
    start, end = info["data_offsets"]
    if not start <= end <= data_len:
        raise DataError(f"{path}: truncated shard or offsets outside the data (tensor {name!r})")
    if end - start != math.prod(info["shape"]) * dtype.itemsize:
        raise DataError(f"{path}: tensor {name!r}: offsets disagree with its shape and dtype")
    return dtype, tuple(info["shape"]), start


def _check_manifest(root: Path, m: object) -> list[str]:
    """The shard file names of a complete manifest; anything else is a :class:`DataError`.
    Shards are plain file names inside ``root`` (``shard-NNNNN.safetensors``): a path that
    leaves the directory is refused."""
    if not isinstance(m, dict):
        raise DataError(f"{root}: {MANIFEST} is not a JSON object")
    if m.get("complete") is not True:
        raise DataError(f"{root}: pair generation has not finished; rerun `fastflow pairs` "
                        "with the same arguments to complete it")
    shards, counts = m.get("shards"), m.get("shard_counts")
    if not isinstance(shards, list) or not shards or not isinstance(counts, list) or len(counts) != len(shards):
        raise DataError(f"{root}: {MANIFEST} needs non-empty 'shards' and 'shard_counts' lists of one length")
    bad = [s for s in shards if not isinstance(s, str) or not SHARD_NAME.fullmatch(s)]
    if bad:
        raise DataError(f"{root}: {MANIFEST} names {bad[0]!r}, not a shard file of this directory "
                        "(shard-NNNNN.safetensors)")
    repeated = sorted({s for s in shards if shards.count(s) > 1})
    if repeated:
        raise DataError(f"{root}: {MANIFEST} lists {repeated[0]} more than once (each pair would be trained on "
                        "twice as often)")
    if not isinstance(m.get("settings"), dict):
        raise DataError(f"{root}: {MANIFEST} has no 'settings' object")
    return shards


def shard_digest(path: Path) -> str | None:
    """The SHA-256 of a shard's tensors, checked against the file's content (None: a shard written
    before digests); a modified file is a :class:`DataError`."""
    return _mapped(path)[1]


def _mapped(path: Path) -> tuple[dict[str, np.memmap], str | None]:
    """Every tensor of a shard mapped (bf16 is not mappable by numpy: store F32/F16), checked against
    the ``sha256`` of its metadata; and that digest (None: written before digests)."""
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > min(MAX_HEADER, path.stat().st_size - 8):
                raise DataError(f"{path}: unreadable shard (a header of {header_len} bytes)")
            header = json.loads(f.read(header_len))
    except (OSError, struct.error, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{path}: unreadable shard ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise DataError(f"{path}: unreadable shard (the header is not a JSON object)")
    out = {}
    data_len = path.stat().st_size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, start = _tensor_info(path, name, info, data_len)
        out[name] = np.memmap(path, dtype=dtype, mode="r", offset=8 + header_len + start, shape=shape)
    if "z" not in out or "x" not in out or out["z"].shape != out["x"].shape or \
            ("label" in out and out["label"].shape != out["z"].shape[:1]):
        raise DataError(f"{path}: a shard holds z and x of one shape (and label [N]); got "
                        f"{ {k: v.shape for k, v in out.items()} }")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise DataError(f"{path}: unreadable shard (__metadata__ must map names to strings)")
    want = meta.get("sha256")
    if want is None:
        if path.parent not in _warned_legacy:
            _warned_legacy.add(path.parent)
            log.warning("%s: shards written before SHA-256 digests; their data cannot be verified", path.parent)
    elif tensors_digest(out) != want:
        raise DataError(f"{path}: SHA-256 mismatch with the shard's metadata (corrupted or modified file)")
    return out, want


def pairs_identity(settings: dict[str, Any], digests: dict[str, str | None]) -> str:
    """One SHA-256 naming a set of pairs: its generation settings and every shard's digest."""
    text = json.dumps(settings, sort_keys=True) + "".join(f"\n{k}:{v}" for k, v in sorted(digests.items()))
    return hashlib.sha256(text.encode()).hexdigest()


class PairDataset(Dataset):
    """Pairs ``(z, x)`` (+ labels) from ``fastflow pairs``; ``get`` returns ``Batch(x, label, z)``."""

    def __init__(self, root: str) -> None:
        self.root = r = Path(root)
        mpath = r / MANIFEST
        if not mpath.is_file():
            raise DataError(f"{root}: no {MANIFEST} (generate pairs with `fastflow pairs`)")
        self.manifest = read_json(mpath, DataError)
        names = _check_manifest(r, self.manifest)
        missing = [s for s in names if not (r / s).is_file() or (r / s).is_symlink()]
        if missing:
            raise DataError(f"{root}: shard {missing[0]} is missing or not a regular file")
        mapped = [_mapped(r / s) for s in names]
        self.shards = [m for m, _ in mapped]
        #: each shard's SHA-256 (its checked metadata), by file name: what a student records of its pairs
        self.digests = {name: sha for name, (_, sha) in zip(names, mapped, strict=True)}
        counts = [len(s["z"]) for s in self.shards]
        if counts != self.manifest["shard_counts"]:
            raise DataError(f"{root}: shard sizes {counts} disagree with the manifest")
        self.offsets = np.cumsum([0, *counts])
        classes = self.manifest["settings"].get("num_classes", 0)
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise DataError(f"{root}: {MANIFEST} settings.num_classes must be an integer >= 0, got {classes!r}")
        self.num_classes = classes

    def provenance(self) -> dict[str, Any]:
        """``{kind, root, identity, shards, teacher}``: the root, :func:`pairs_identity`, each shard's
        digest, and the teacher as the manifest names it (checked by :func:`check_provenance`)."""
        return {"kind": "pairs", "root": str(self.root.resolve()),
                "identity": pairs_identity(self.manifest["settings"], self.digests),
                "shards": self.digests, "teacher": self.manifest["settings"].get("teacher")}

    @classmethod
    def check_provenance(cls, record: dict[str, Any]) -> tuple[str, str]:
        return _check_provenance(record)

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


def _check_provenance(rec: dict[str, Any]) -> tuple[str, str]:
    """``(status, detail)`` of a :meth:`PairDataset.provenance` record against the disk now: ``ok``,
    ``missing`` (the root is gone) or ``changed`` (naming the shards that differ)."""
    root = Path(str(rec.get("root")))
    if not root.is_dir():
        return "missing", f"{root} is not on disk"
    recorded = rec.get("shards")
    if not isinstance(recorded, dict) or not all(isinstance(k, str) and "/" not in k for k in recorded):
        return "changed", "the recorded shard list is malformed"
    now: dict[str, str | None] = {}
    for name in sorted(recorded):
        try:
            now[name] = shard_digest(root / name) if (root / name).is_file() else "missing"
        except DataError:
            now[name] = "modified"
    changed = [name for name in now if now[name] != recorded[name]]
    if changed:
        return "changed", f"{', '.join(changed[:5])}{' …' if len(changed) > 5 else ''} differ from the pairs trained on"
    try:
        current = pairs_identity(read_json(root / MANIFEST, DataError).get("settings"), now)
    except (DataError, OSError, TypeError, AttributeError) as e:
        return "changed", f"manifest unreadable ({e})"
    if current != rec.get("identity"):
        return "changed", "the manifest's generation settings differ from the pairs trained on"
    return "ok", f"{len(recorded)} shards as trained on"
