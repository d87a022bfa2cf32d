"""What ``fused=auto`` picks: the fastest kernel path for a device kind and a model size class,
read from a measured winners table, with a documented default where none exists.

The table (``{"format": "fastflow-fused-winners", "version": 1, "entries": [...]}``, one entry per
``device`` kind and ``size`` class naming its winning ``path`` and the measurement it came from) is
written by ``fastflow bench winners BENCH.json --switch-table`` from a ``fused-paths`` bench
(``benchmarks/cpu_fused_paths.py``). The user's table in the cache directory
(``$FASTFLOW_CACHE/fused-winners.json``, :func:`user_table`) wins over the one shipped with
fastflow (``fastflow/fused/winners.json``, measured on the CPUs in ``benchmarks/results/``).

Without an entry: :data:`DEFAULTS` — ``triton`` on CUDA with Triton, ``off`` elsewhere (the CPU
block kernel is opt-in until a measurement on this kind of device says it wins).
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any

from fastflow.errors import ConfigError
from fastflow.utils.cache import cache_dir
from fastflow.utils.io import read_json

FORMAT, VERSION = "fastflow-fused-winners", 1
SHIPPED = Path(__file__).with_name("winners.json")
PATHS = ("off", "triton", "cpu")
DEVICES = ("cpu", "cuda")
#: size classes by parameter count: (upper bound, name); a model belongs to the first it fits
SIZES = ((4_000_000, "small"), (math.inf, "large"))
#: the path where no table names one, by device kind
DEFAULTS = {"cuda": "triton", "cpu": "off"}


def size_class(params: int) -> str:
    """``small`` (≤ 4 M parameters: per-call overhead dominates) or ``large``."""
    return next(name for bound, name in SIZES if params <= bound)


def user_table() -> Path:
    return cache_dir() / "fused-winners.json"


def check_table(doc: Any, source: str) -> list[dict[str, Any]]:
    """The entries of a winners table, checked (one-line :class:`ConfigError` otherwise)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION or \
            not isinstance(doc.get("entries"), list):
        raise ConfigError(f"{source}: not a fused winners table of version {VERSION} (remake it with "
                          "fastflow bench winners --switch-table)")
    sizes = {name for _, name in SIZES}
    for e in doc["entries"]:
        if not isinstance(e, dict) or e.get("device") not in DEVICES or e.get("size") not in sizes or \
                e.get("path") not in PATHS or not isinstance(e.get("source", ""), str):
            raise ConfigError(f"{source}: malformed entry {str(e)[:80]} (device in {DEVICES}, size in "
                              f"{sorted(sizes)}, path in {PATHS})")
    return doc["entries"]


@cache
def _read(path: Path, mtime_ns: int) -> tuple[dict[str, Any], ...]:
    return tuple(check_table(read_json(path), str(path)))


def table() -> tuple[tuple[dict[str, Any], ...], str]:
    """The entries in force and where they came from (the user's table, else the shipped one)."""
    for path in (user_table(), SHIPPED):
        if path.is_file():
            return _read(path, path.stat().st_mtime_ns), str(path)
    return (), "no table"


def auto_path(device: str, params: int, inference: bool, compiled: bool, why: str) -> tuple[str, str]:
    """``(path, reason)`` of ``fused=auto`` on a ``device`` kind for a model of ``params``
    parameters; ``compiled``: the Triton kernels run here as GPU code (``why`` says why not)."""
    size = size_class(params)
    entries, source = table()
    hit = next((e for e in entries if e["device"] == device and e["size"] == size), None)
    if hit is None:
        path, reason = DEFAULTS.get(device, "off"), f"default for {device} ({source} has no {size}-model entry)"
    else:
        path, reason = hit["path"], f"winner for {size} models on {device} in {Path(source).name}"
    if path == "triton" and not compiled:
        return "off", f"{reason} is triton, but {why}"
    if path == "cpu" and not inference:
        return "off", f"{reason} is cpu, which is inference-only"
    return path, reason
