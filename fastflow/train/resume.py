"""When a run folder may be written and a checkpoint continued: a run's ``out_dir`` is new, empty or
a run's own (never ``/``, never a folder of other files), and ``--resume`` refuses a checkpoint whose
seed, batch size, model, data or objective differ from the config's — defaults filled in on both
sides — since the model, or the random and data streams, would silently differ."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from fastflow.data import dataset_settings
from fastflow.errors import ConfigError, FastflowError
from fastflow.models.checkpoint import read_config
from fastflow.models.sharded import is_sharded
from fastflow.objectives.base import objective_settings, setting_defaults
from fastflow.train.config import TrainConfig
from fastflow.utils.distributed import DistInfo

log = logging.getLogger(__name__)

#: what a training run writes into its out_dir (a folder holding anything else is not a run)
RUN_ENTRIES = {"config.yaml", "log.jsonl", "checkpoints", "samples", "tb", ".lock"}


def check_run_dir(run: Path) -> None:
    """``run`` is a new or empty folder, or one a training run wrote; never the file system's root
    (compared by device and inode) and never a folder holding other things (their owner's files)."""
    try:
        entries = {p.name for p in run.iterdir()} if run.is_dir() else set()
        is_root = run.is_dir() and os.path.samestat(run.stat(), Path(run.anchor or "/").stat())
    except OSError as e:
        raise ConfigError(f"out_dir {run}: {e.strerror or e}") from None
    if is_root:
        raise ConfigError(f"out_dir {run} is the root of the file system; choose a folder for the run")
    if entries and not entries & {"config.yaml", "checkpoints"} and entries - RUN_ENTRIES:
        raise ConfigError(f"out_dir {run} is a non-empty folder that is not a fastflow run (it holds "
                          f"{min(entries - RUN_ENTRIES)!r}); choose a new or empty folder")


def check_resumable(cfg: TrainConfig, info: DistInfo, ckpt: Path, model: nn.Module, objective: Any) -> dict[str, Any]:
    """The checkpoint's meta; refuses what would not continue that run — a changed seed, batch size,
    model, data or objective, defaults filled in (the model, or the random and data streams, would
    silently differ) — and a single-file checkpoint under FSDP2; notes a changed micro-batch split."""
    record = read_config(ckpt)
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    stored = {"seed": meta.get("seed"), "train.batch_size": meta.get("batch_size"), "model": record.get("model"),
              "data": _settings(dataset_settings, meta.get("data_config")), "objective": meta.get("objective_settings")}
    now = {"seed": cfg.seed, "train.batch_size": cfg.train.batch_size, "model": model.config.to_dict(),
           "data": dataset_settings(cfg.data), "objective": objective_settings(objective)}
    now["objective"] = _unrecorded_defaults_dropped(stored["objective"], jsonable(now["objective"]), objective)
    for key, was in stored.items():
        changed = difference(key, was, jsonable(now[key])) if was is not None else None
        if changed is not None:
            name, before, after = changed
            raise ConfigError(f"{ckpt} was trained with {name}={before}; resuming with {after} would not continue "
                              f"that run: keep it, or start a new out_dir with train.init_from={ckpt}")
    if cfg.train.parallel == "fsdp2" and not is_sharded(ckpt):
        raise ConfigError(f"{ckpt} is a single-file (DDP) checkpoint; it resumes with train.parallel=ddp, "
                          f"or starts an FSDP2 run in a new out_dir with train.init_from={ckpt}")
    split = info.world * cfg.train.grad_accum
    if meta.get("micro_batches", split) != split and info.main:
        log.warning("%s was written with %s micro-batches per step (world × grad_accum), this run uses %d: "
                    "same global batches, different noise draws; training continues, not bit-exactly",
                    ckpt, meta["micro_batches"], split)
    return meta


def _unrecorded_defaults_dropped(was: Any, now: dict[str, Any], objective: Any) -> dict[str, Any]:
    """``now`` less the settings a checkpoint does not record (options added since it was written) that
    are at their defaults: those runs continue unchanged (e.g. MeanFlow's ``kappa`` 0 and ``cfg_interval``)."""
    if not isinstance(was, dict):
        return now
    defaults = jsonable(setting_defaults(objective))
    return {k: v for k, v in now.items() if k in was or k not in defaults or v != defaults[k]}


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from a checkpoint's ``config.json`` (tuples as lists, others as text)."""
    return json.loads(json.dumps(value, default=str))


def _settings(canonical: Any, spec: Any) -> Any:
    """``canonical(spec)`` as JSON values, or None for a section a checkpoint records in a form this
    version does not read (not compared)."""
    try:
        return jsonable(canonical(spec)) if isinstance(spec, dict) else None
    except FastflowError:
        return None


def difference(key: str, was: Any, now: Any) -> tuple[str, Any, Any] | None:
    """The first ``(key[.sub], before, after)`` where two settings differ (mappings compared per key)."""
    if was == now:
        return None
    if isinstance(was, dict) and isinstance(now, dict):
        sub = min((k for k in {*was, *now} if was.get(k, "(unset)") != now.get(k, "(unset)")), key=str)
        return f"{key}.{sub}", was.get(sub, "(unset)"), now.get(sub, "(unset)")
    return key, was, now
