"""The metadata of a sharded (DCP) checkpoint as JSON: ``dcp/metadata.json`` replaces DCP's pickled
``dcp/.metadata``, so loading what fastflow wrote unpickles nothing.

DCP describes a checkpoint with a :class:`~torch.distributed.checkpoint.metadata.Metadata`: per
state-dict key the tensor's dtype, global size and chunks (offsets, sizes), the planner's
key → nested-path mapping, and per chunk the shard file and byte range that holds it. The JSON
record holds exactly that::

    {"format": "fastflow-dcp-metadata", "version": 1,
     "tensors": {KEY: {"dtype": "float32", "size": [32, 8], "chunks": [{"offsets": [0, 0], "sizes": [32, 8]}]}},
     "planner_data": {KEY: ["model", "time_mlp.0.weight"]},
     "storage": [{"key": KEY, "offset": [0, 0], "index": 0, "file": "__0_0.distcp", "start": 0, "length": 2601}]}

:func:`metadata_of` validates every field (types, ranges, a chunk inside its tensor, a shard file
name without a directory part) and builds the DCP records itself. A checkpoint written before this
format (or by DCP directly) has a pickled ``.metadata``: :func:`read_legacy` unpickles it with an
allow-list of exact (module, qualified name) pairs — DCP's record types, ``torch.Size``, the dtypes
— checks that the result *is* a ``Metadata``, and passes it through the same validation.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from fastflow.errors import CheckpointError

FORMAT, VERSION = "fastflow-dcp-metadata", 1
JSON_NAME, PICKLE_NAME = "metadata.json", ".metadata"
_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}\.distcp")
_DTYPES = {str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)}
_BOUND = 1 << 62  # sizes, offsets and byte ranges fit an int64 with room to add
_DCP_META, _DCP_FS = "torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem"
#: the exact (module, name) pairs a legacy ``.metadata`` may name: DCP's records, sizes, dtypes, layouts
LEGACY_GLOBALS = frozenset(
    {(_DCP_META, n) for n in ("Metadata", "MetadataIndex", "TensorStorageMetadata", "ChunkStorageMetadata",
                              "TensorProperties", "_MEM_FORMAT_ENCODING", "BytesStorageMetadata", "StorageMeta")}
    | {(_DCP_FS, "_StorageInfo"), ("torch", "Size"), ("torch.serialization", "_get_layout"),
       ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath")}
    | {("torch", name) for name in _DTYPES})


def record_of(meta: Any) -> dict[str, Any]:
    """The JSON record of a DCP ``Metadata`` (tensor entries only; a pickled value is refused)."""
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

    if not isinstance(meta, Metadata):
        raise CheckpointError(f"DCP metadata is a {type(meta).__name__}, not a Metadata record")
    tensors = {}
    for key, entry in _items(meta.state_dict_metadata, "state_dict_metadata"):
        if not isinstance(entry, TensorStorageMetadata):
            raise CheckpointError(f"holds pickled values ({key}); refused to unpickle them")
        tensors[key] = {"dtype": str(getattr(entry.properties, "dtype", None)).removeprefix("torch."),
                        "size": _plain(entry.size),
                        "chunks": [{"offsets": _plain(c.offsets), "sizes": _plain(c.sizes)} for c in entry.chunks]}
    storage = [{"key": i.fqn, "offset": _plain(i.offset), "index": i.index, "file": s.relative_path,
                "start": s.offset, "length": s.length, **({"transforms": list(s.transform_descriptors)}
                                                           if s.transform_descriptors else {})}
               for i, s in _items(meta.storage_data, "storage_data")]
    planner = {k: list(v) if isinstance(v, tuple) else v for k, v in _items(meta.planner_data, "planner_data")}
    return {"format": FORMAT, "version": VERSION, "tensors": tensors, "planner_data": planner, "storage": storage}


def metadata_of(record: Any, where: str) -> Any:
    """A DCP ``Metadata`` built from a validated JSON ``record``; anything malformed is a
    :class:`CheckpointError` naming ``where`` and the field."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta

    rec = _obj(record, {"format", "version", "tensors", "planner_data", "storage"}, where)
    if rec["format"] != FORMAT or rec["version"] != VERSION:
        raise CheckpointError(f"{where}: not {FORMAT} version {VERSION} "
                              f"(format {rec['format']!r}, version {rec['version']!r})")
    tensors = {_key(k, where): _tensor(v, f"{where}: tensors[{k!r}]") for k, v in _dict(rec["tensors"], where).items()}
    planner = {}
    for k, path in _dict(rec["planner_data"], where).items():
        if k not in tensors or not isinstance(path, list) or not path or \
                not all(isinstance(p, str) or _is_int(p) for p in path):
            raise CheckpointError(f"{where}: planner_data[{k!r}] must be a non-empty path of a listed tensor")
        planner[k] = tuple(path)
    if set(planner) != set(tensors):
        raise CheckpointError(f"{where}: planner_data and tensors list different keys")
    storage = {}
    for n, s in enumerate(rec["storage"] if isinstance(rec["storage"], list) else [None]):
        s = _obj(s, {"key", "offset", "index", "file", "start", "length"}, f"{where}: storage[{n}]")
        if s["key"] not in tensors or not isinstance(s["file"], str) or not _FILE.fullmatch(s["file"]):
            raise CheckpointError(f"{where}: storage[{n}] names an unknown tensor or a file outside dcp/")
        offset = _ints(s["offset"], f"{where}: storage[{n}].offset")
        if offset not in [c.offsets for c in tensors[s["key"]].chunks]:
            raise CheckpointError(f"{where}: storage[{n}] points at no chunk of {s['key']!r}")
        if s["index"] is not None and not _is_int(s["index"]):
            raise CheckpointError(f"{where}: storage[{n}].index must be an integer or null")
        index = MetadataIndex(s["key"], offset, s["index"])
        start, length = (_ints([s[f]], f"{where}: storage[{n}].{f}")[0] for f in ("start", "length"))
        storage[index] = _StorageInfo(relative_path=s["file"], offset=start, length=length)
    chunks = {(k, c.offsets) for k, t in tensors.items() for c in t.chunks}
    if {(i.fqn, i.offset) for i in storage} != chunks or len(rec["storage"]) != len(chunks):
        raise CheckpointError(f"{where}: storage does not name each chunk of each tensor exactly once")
    return Metadata(state_dict_metadata=tensors, planner_data=planner, storage_data=storage,
                    storage_meta=StorageMeta(), version="1.0.0")


def read_legacy(path: Path) -> Any:
    """A pickled DCP ``.metadata`` through the exact-pair allow-list, validated like JSON."""
    try:
        meta = _LegacyUnpickler(io.BytesIO(path.read_bytes())).load()
        record = record_of(meta)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        AttributeError,
        TypeError,
        ValueError,
        IndexError,
        KeyError,
        RecursionError,
        MemoryError,
        RuntimeError,
        OverflowError,
    ) as e:  # hostile bytes raise these
        # (RuntimeError: TensorProperties.__setstate__ refusing a memory-format code)
        raise CheckpointError(
            f"{path}: unreadable DCP metadata ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    return metadata_of(record, str(path))


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in LEGACY_GLOBALS:
            return super().find_class(module, name)
        raise CheckpointError(f"DCP metadata names {module + '.' + name!r}, which is not a DCP record type; "
                              "refused to unpickle it")


def _tensor(v: Any, where: str) -> Any:
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorProperties, TensorStorageMetadata

    t = _obj(v, {"dtype", "size", "chunks"}, where)
    if not isinstance(t["dtype"], str) or t["dtype"] not in _DTYPES:
        raise CheckpointError(f"{where}: unknown dtype {t['dtype']!r}")
    size = _ints(t["size"], f"{where}.size")
    chunks = []
    for c in t["chunks"] if isinstance(t["chunks"], list) and t["chunks"] else [None]:
        c = _obj(c, {"offsets", "sizes"}, f"{where}.chunks")
        offsets, sizes = _ints(c["offsets"], f"{where}.chunks"), _ints(c["sizes"], f"{where}.chunks")
        if len(offsets) != len(size) or len(sizes) != len(size) or \
                any(o + n > s for o, n, s in zip(offsets, sizes, size, strict=False)):
            raise CheckpointError(f"{where}: a chunk lies outside the tensor's size {list(size)}")
        chunks.append(ChunkStorageMetadata(offsets=offsets, sizes=sizes))
    return TensorStorageMetadata(properties=TensorProperties(dtype=_DTYPES[t["dtype"]]), size=size, chunks=chunks)


def _obj(v: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(v, dict) or set(v) != keys:
        raise CheckpointError(f"{where}: want an object with the keys {sorted(keys)}")
    return v


def _dict(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise CheckpointError(f"{where}: want an object, got {type(v).__name__}")
    return v


def _key(k: str, where: str) -> str:
    if not k:
        raise CheckpointError(f"{where}: an empty tensor key")
    return k


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _BOUND


def _ints(v: Any, where: str) -> torch.Size:
    if not isinstance(v, list) or len(v) > 16 or not all(_is_int(i) for i in v):
        raise CheckpointError(f"{where}: want a list of at most 16 integers in [0, 2**62)")
    return torch.Size(v)


def _plain(size: Any) -> Any:
    return None if size is None else [int(i) for i in size]


def _items(v: Any, what: str) -> list[tuple[Any, Any]]:
    if not isinstance(v, dict):
        raise CheckpointError(f"DCP metadata's {what} is a {type(v).__name__}, not a mapping")
    return list(v.items())
