"""Sharded, resumable pair generation.

``out/shard-XXXXX.safetensors`` holds ``z``, ``x`` (and ``label``) for ``shard_size`` pairs;
``out/manifest.json`` holds the settings (teacher identity, solver, seed, sizes) and, once
every shard exists, counts, mean NFE and throughput.

* The noise (and labels) of shard ``k`` depend only on ``(seed, k)``: any number of ranks,
  restarts or machines produce the same pairs.
* Rank ``r`` of ``W`` takes shards ``k ≡ r (mod W)``.
* Shards are written to a temporary name and renamed: a killed run loses at most the shards in
  flight, and a restart skips finished shards, so nothing is duplicated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor
from tqdm import tqdm

from fastflow import __version__
from fastflow.data.pairs import MANIFEST, tensors_digest
from fastflow.errors import DataError
from fastflow.utils.distributed import DistInfo, barrier
from fastflow.utils.io import atomic_save_tensors, atomic_write_json, read_json, remove_stale_temps, temp_name
from fastflow.utils.lock import directory_lock
from fastflow.utils.seeding import derive_seed

#: the manifest's version: 2 derives shard seeds with ``derive_seed`` (1: SHA-256)
PAIRS_VERSION = 2


class Teacher(Protocol):
    num_classes: int

    def identity(self) -> dict[str, Any]: ...

    def __call__(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]: ...


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def shard_generator(seed: int, k: int) -> torch.Generator:
    """The RNG of shard ``k``: :func:`derive_seed` of ``(seed, k)``, independent of ranks and restarts
    (manifest version 2; version 1 hashed with SHA-256)."""
    return torch.Generator().manual_seed(derive_seed(seed, f"pairs shard {k}"))


def shard_inputs(seed: int, k: int, count: int, shape: Sequence[int],
                 num_classes: int) -> tuple[Tensor, Tensor | None]:
    g = shard_generator(seed, k)
    z = torch.randn(count, *shape, generator=g)
    label = torch.randint(0, num_classes, (count,), generator=g) if num_classes else None
    return z, label


def _complete(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {"z", "x"} <= set(f.keys())
    except (SafetensorError, OSError):  # absent, truncated or foreign file: regenerate it
        return False


def generate_pairs(teacher: Teacher, out: str | Path, n: int, sample_shape: Sequence[int],
                   shard_size: int = 1000, seed: int = 0, batch_size: int = 256,
                   device: str | torch.device = "cpu", dtype: str = "float32",
                   info: DistInfo | None = None, progress: bool = True) -> dict[str, Any]:
    """Write ``n`` teacher pairs under ``out``; returns the manifest (complete on rank 0). The
    directory is locked while pairs are written (by rank 0 for a torchrun job): a second writer
    there is refused with :class:`~fastflow.errors.LockedError`."""
    info = info or DistInfo()
    if n < 1 or shard_size < 1 or batch_size < 1:
        raise DataError("n, shard_size and batch_size must be >= 1")
    if dtype not in ("float32", "float16"):
        raise DataError(f"dtype must be float32 or float16, got {dtype!r}")
    root = Path(out)
    with directory_lock(root, "pair generation", enabled=info.main):
        return _generate(teacher, root, n, sample_shape, shard_size, seed, batch_size, device, dtype, info,
                         progress)


def _generate(teacher: Teacher, root: Path, n: int, sample_shape: Sequence[int], shard_size: int, seed: int,
              batch_size: int, device: str | torch.device, dtype: str, info: DistInfo,
              progress: bool) -> dict[str, Any]:
    n_shards = math.ceil(n / shard_size)
    settings = {"teacher": teacher.identity(), "n": n, "shard_size": shard_size, "seed": seed,
                "shape": list(sample_shape), "num_classes": teacher.num_classes, "dtype": dtype}
    manifest_path = root / MANIFEST
    if info.main:
        if manifest_path.is_file():
            old = read_json(manifest_path, DataError)
            if old.get("version", 1) != PAIRS_VERSION and not old.get("complete"):
                raise DataError(f"{root} holds unfinished pairs of an earlier fastflow (other shard seeds); "
                                "use another output directory or delete it")
            if old.get("settings") != settings:
                raise DataError(f"{root} holds pairs made with other settings; "
                                "use another output directory or delete it")
        else:
            atomic_write_json(manifest_path, {"format": "fastflow-pairs", "version": PAIRS_VERSION,
                                              "fastflow_version": __version__,
                                              "settings": settings, "complete": False})
        remove_stale_temps(root, temp_name(r"shard-\d{5,}\.safetensors|manifest\.json"))
    barrier(info)

    mine = [k for k in range(info.rank, n_shards, info.world)
            if not _complete(root / shard_name(k))]
    store = getattr(torch, dtype)
    todo = sum(min(shard_size, n - k * shard_size) for k in mine)  # counted per pair: a shard can take minutes
    bar = tqdm(total=todo, disable=not (progress and info.main), desc=f"pairs (rank {info.rank})", unit="pair")
    done_pairs, t0 = 0, time.perf_counter()
    for j, k in enumerate(mine, 1):
        count = min(shard_size, n - k * shard_size)
        z, label = shard_inputs(seed, k, count, sample_shape, teacher.num_classes)
        xs, nfes = [], []
        for i in range(0, count, batch_size):
            zb = z[i:i + batch_size].to(device)
            cb = None if label is None else label[i:i + batch_size].to(device)
            x, nfe = teacher(zb, cb)
            if not torch.isfinite(x).all():
                raise DataError(f"teacher produced non-finite samples in shard {k}")
            xs.append(x.float().cpu())
            nfes.append(nfe.float().cpu())
            bar.update(len(zb))
        tensors = {"z": z.to(store), "x": torch.cat(xs).to(store)}
        if label is not None:
            tensors["label"] = label
        nfe_mean = float(torch.cat(nfes).mean())
        atomic_save_tensors(root / shard_name(k), tensors, metadata={
            "nfe": repr(nfe_mean), "count": str(count), "sha256": tensors_digest(
                {name: t.numpy() for name, t in tensors.items()})})
        done_pairs += count
        rate = done_pairs / (time.perf_counter() - t0)
        bar.set_postfix(pairs_per_s=f"{rate:.1f}", nfe=f"{nfe_mean:.1f}", shards=f"{j}/{len(mine)}")
    bar.close()
    elapsed = time.perf_counter() - t0
    barrier(info)
    if not info.main:
        return {"settings": settings}
    return finalize_manifest(root, settings, n_shards, done_pairs / elapsed if done_pairs else None)


def finalize_manifest(root: Path, settings: dict[str, Any], n_shards: int,
                      pairs_per_s: float | None) -> dict[str, Any]:
    """Record counts and mean NFE once every shard is on disk."""
    counts, nfe_sum = [], 0.0
    for k in range(n_shards):
        path = root / shard_name(k)
        if not _complete(path):
            raise DataError(f"{path} is missing after generation")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        c = int(meta["count"])
        counts.append(c)
        nfe_sum += float(meta["nfe"]) * c
    manifest = read_json(root / MANIFEST, DataError)
    manifest.update(complete=True, count=sum(counts), shards=[shard_name(k) for k in range(n_shards)],
                    shard_counts=counts, mean_nfe=nfe_sum / sum(counts))
    if pairs_per_s is not None:
        manifest["last_run_pairs_per_s_rank0"] = pairs_per_s
    atomic_write_json(root / MANIFEST, manifest)
    return manifest
