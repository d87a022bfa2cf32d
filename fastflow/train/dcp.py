"""Sharded training checkpoints (FSDP2) through ``torch.distributed.checkpoint``.

``<run>/checkpoints/step-XXXXXXXX/`` holds ``dcp/`` — every rank writes its own shards of the model,
the EMA and Adam's moments, in parallel — and ``config.json`` (the usual record plus the SHA-256 of
every file in ``dcp/``). The directory is written as ``.step-XXXXXXXX.tmp``; rank 0 digests the
shards and renames it only after every rank's ``save`` returned, then moves ``latest``: a checkpoint
directory is complete or absent, and ``latest`` never names an incomplete one.

Only tensors are saved (the optimiser's hyper-parameters come from the config), and DCP's metadata is
written as JSON (``dcp/metadata.json``), so loading unpickles nothing (:mod:`fastflow.models.sharded`).
Loading reshards: a checkpoint written by N ranks resumes on M.
The data stream and the training noise are functions of the global step and the micro-batch
index, so resuming with the same ``world × grad_accum`` continues the very same batches and noise.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastflow.models.checkpoint import checkpoints_root, read_config, write_config
from fastflow.models.dcp_metadata import JSON_NAME, record_of
from fastflow.models.sharded import SHARDS, load_parts, shard_files
from fastflow.train.state import publish
from fastflow.utils.distributed import DistInfo, barrier
from fastflow.utils.io import atomic_write_json, disk_errors, file_digest


def _state(model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, Any], list[Any]]:
    """The tensors a checkpoint holds (sharded where the model is) and the optimiser's param groups."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, opt)  # creates Adam's moments (zeros) before the first step
    return {"model": get_model_state_dict(model), "ema": get_model_state_dict(ema),
            "optim": {"state": osd["state"]}}, osd["param_groups"]


def _writer(path: Path) -> Any:
    """DCP's ``FileSystemWriter`` writing its metadata as ``metadata.json`` instead of a pickle."""
    from torch.distributed.checkpoint import FileSystemWriter

    class JsonMetadataWriter(FileSystemWriter):
        def finish(self, metadata: Any, results: list[list[Any]]) -> None:  # on the coordinator rank
            metadata.storage_data = {r.index: r.storage_data for rank in results for r in rank}
            atomic_write_json(Path(self.path) / JSON_NAME, record_of(metadata))

    return JsonMetadataWriter(path)


def _save(state: dict[str, Any], path: Path) -> None:
    """DCP's ``save`` into ``path`` (JSON metadata). DCP wraps what a rank raised in its
    ``CheckpointException``: a full disk becomes the ``OSError(ENOSPC)`` naming ``path`` that the CLI
    reports in one line; anything else is raised as the rank raised it."""
    from torch.distributed.checkpoint import save
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        save(state, storage_writer=_writer(path))
    except CheckpointException as e:
        failures = [w[0] if isinstance(w, tuple) else w for w in e.failures.values()]  # (exception, traceback)
        with disk_errors(path):
            raise (failures[0] if failures else e) from e


def save_sharded(run_dir: str | Path, step: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                 keep: int, meta: dict[str, Any], info: DistInfo) -> Path:
    """Every rank calls this. Writes the checkpoint of ``step``, points ``latest`` at it, prunes."""
    name = f"step-{step:08d}"
    final, tmp = checkpoints_root(run_dir) / name, checkpoints_root(run_dir) / f".{name}.tmp"
    if info.main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / SHARDS).mkdir(parents=True)
    barrier(info)
    state, _ = _state(model, ema, opt)
    try:
        _save(state, tmp / SHARDS)
        barrier(info)
        if info.main:
            digests = {f: file_digest(tmp / f) for f in shard_files(tmp)}
            write_config(tmp, model, {**meta, "step": step}, digests)
            publish(run_dir, tmp, keep)
    except BaseException:  # a full disk, Ctrl-C: nothing partial stays; the earlier checkpoints do
        if info.main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier(info)
    return final


def load_sharded(ckpt: str | Path, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                 info: DistInfo) -> int:
    """Every rank calls this. Loads model, EMA and optimiser state (resharded to this world size);
    returns the checkpoint's step."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    cfg = read_config(ckpt)
    state, groups = _state(model, ema, opt)
    load_parts(ckpt, state, cfg.get("sha256") or {}, distributed=info.world > 1)
    set_model_state_dict(model, state["model"])
    set_model_state_dict(ema, state["ema"])
    set_optimizer_state_dict(model, opt, {"state": state["optim"]["state"], "param_groups": groups})
    return int(cfg["meta"]["step"])
