"""What a student came from: recorded in every checkpoint of a run, checked later.

A run writes ``meta.lineage`` into each checkpoint's ``config.json``, the exact inputs beside their
paths:

- ``pairs`` (``data.name: pairs``; :meth:`~fastflow.data.base.Dataset.provenance`): the pairs'
  root, their identity (SHA-256 over the generation settings and every shard's digest), each shard's
  digest, and the teacher that made them as the pairs' manifest names it (checkpoint, weights file, SHA-256);
- ``teacher``: the objective's frozen network (FGD's guide, OFTSR's teacher): checkpoint, weights
  file, SHA-256 of those weights;
- ``init_from``: the checkpoint whose weights started the run, likewise.

:func:`chain` walks these links from a checkpoint back through every checkpoint they name
(``fastflow checkpoint info``); :func:`verify` checks a checkpoint link against the disk now
(``--verify``), the dataset that wrote a data link checks that one (pairs: ``check_provenance``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastflow.data import Dataset, dataset_class
from fastflow.errors import CheckpointError, ConfigError
from fastflow.models.checkpoint import read_config, resolve_checkpoint, weights_source
from fastflow.train.config import TrainConfig
from fastflow.utils.io import file_digest

#: how deep :func:`chain` follows checkpoints (a lineage is a few generations, not a loop)
MAX_DEPTH = 16


def checkpoint_link(path: str | Path, weights: str) -> dict[str, str]:
    """``{checkpoint, weights, sha256}`` of the weights :func:`~fastflow.models.load_model` reads."""
    d = resolve_checkpoint(path)
    name, sha = weights_source(d, weights)
    return {"checkpoint": str(d.resolve()), "weights": name, "sha256": sha}


def record_lineage(cfg: TrainConfig, data: Dataset) -> dict[str, Any]:
    """The ``meta.lineage`` of a run's checkpoints (module docstring)."""
    out: dict[str, Any] = {}
    source = data.provenance()
    if source is not None:
        out[source["kind"]] = source
    if cfg.objective.get("teacher"):
        weights = str(cfg.objective.get("teacher_weights", "ema"))
        out["teacher"] = checkpoint_link(str(cfg.objective["teacher"]), weights)
    if cfg.train.init_from:
        out["init_from"] = checkpoint_link(cfg.train.init_from, "ema")
    return out


@dataclass(frozen=True)
class Link:
    """One recorded input of a checkpoint: its role, the record, and how far down the chain it is."""

    role: str  # pairs, teacher, init_from, or "pairs teacher" (the checkpoint that made the pairs)
    record: dict[str, Any]
    depth: int

    def describe(self) -> str:
        r = self.record
        if self.role == "pairs":
            shards = r.get("shards")
            count = len(shards) if isinstance(shards, dict) else "?"
            return f"pairs: {r.get('root')} (identity {str(r.get('identity'))[:12]}, {count} shards)"
        if "checkpoint" in r:
            return f"{self.role}: {r['checkpoint']} ({r.get('weights')} {str(r.get('sha256'))[:12]})"
        return f"{self.role}: {r.get('kind', 'unknown')} {r.get('name', '')} (not a checkpoint: nothing to check)"


def lineage_of(path: str | Path) -> dict[str, Any] | None:
    """A checkpoint's recorded lineage (None: saved before fastflow recorded one, or outside training)."""
    meta = read_config(resolve_checkpoint(path)).get("meta") or {}
    lineage = meta.get("lineage") if isinstance(meta, dict) else None
    if lineage is not None and not isinstance(lineage, dict):
        raise CheckpointError(f"{path}: meta.lineage is not a mapping")
    return lineage


def chain(path: str | Path, depth: int = 0, seen: set[tuple[int, int]] | None = None) -> list[Link]:
    """Every link from the checkpoint ``path`` back, depth first; checkpoints already shown (compared
    by device and inode) and ones no longer on disk are not followed."""
    seen = set() if seen is None else seen
    d = resolve_checkpoint(path)
    st = os.stat(d)
    if (st.st_dev, st.st_ino) in seen or depth >= MAX_DEPTH:
        return []
    seen.add((st.st_dev, st.st_ino))
    links: list[Link] = []
    for role, rec in (lineage_of(d) or {}).items():
        if role not in ("pairs", "teacher", "init_from") or not isinstance(rec, dict):
            continue
        links.append(Link(role, rec, depth))
        follow = rec
        if role == "pairs" and isinstance(rec.get("teacher"), dict):
            follow = rec["teacher"]
            links.append(Link("pairs teacher", follow, depth + 1))
        if isinstance(follow.get("checkpoint"), str) and Path(follow["checkpoint"]).is_dir():
            links += chain(follow["checkpoint"], depth + 1 + (follow is not rec), seen)
    return links


def verify(link: Link) -> tuple[str, str]:
    """``(status, detail)`` of a link against the disk now: ``ok``, ``missing`` or ``changed``
    (``n/a`` for a teacher that is not a checkpoint). A data link is checked by the dataset class
    of its ``kind`` (:meth:`~fastflow.data.base.Dataset.check_provenance`)."""
    if link.role not in ("teacher", "init_from", "pairs teacher"):
        try:
            return dataset_class(link.record.get("kind")).check_provenance(link.record)
        except ConfigError:
            return "n/a", f"data of an unknown kind {link.record.get('kind')!r}"
    if "checkpoint" not in link.record:
        return "n/a", "not a checkpoint"
    rec = link.record
    d = Path(str(rec["checkpoint"]))
    name = str(rec.get("weights", ""))
    if not d.is_dir():
        return "missing", f"{d} is not on disk"
    if not (name in ("ema.safetensors", "model.safetensors") or name in ("dcp/ema", "dcp/model")):
        return "changed", f"the recorded weights {name!r} are not a checkpoint's weights"
    try:
        if name.endswith(".safetensors"):
            if not (d / name).is_file():
                return "changed", f"{d / name} is gone"
            now = file_digest(d / name)
        else:
            now = weights_source(d, name.rsplit("/", 1)[-1])[1]
    except (CheckpointError, OSError) as e:
        return "changed", f"unreadable ({e})"
    return ("ok", f"{name} SHA-256 {now[:12]}") if now == rec.get("sha256") else \
        ("changed", f"{name} SHA-256 is {now[:12]}, the student was trained with {str(rec.get('sha256'))[:12]}")


__all__ = ["Link", "chain", "checkpoint_link", "lineage_of", "record_lineage", "verify"]
