"""Training checkpoints: ``<run>/checkpoints/step-XXXXXXXX/`` holding ``config.json``,
``model.safetensors``, ``ema.safetensors`` and ``state.pt`` (optimizer and step; loaded with
``weights_only=True``), or, for FSDP2 runs, ``dcp/`` shards (:mod:`fastflow.train.dcp`). A checkpoint
directory is written under a temporary name and renamed when complete; ``checkpoints/latest`` names the newest one."""

from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastflow.errors import CheckpointError
from fastflow.models.checkpoint import (
    STEP_NAME,
    checkpoints_root,
    load_weights,
    read_latest,
    save_model,
    verify_payload,
)
from fastflow.models.sharded import is_sharded
from fastflow.utils.io import atomic_torch_save, atomic_write_text


@dataclass
class TrainState:
    step: int
    optimizer: dict[str, Any]


def save_checkpoint(run_dir: str | Path, model: nn.Module, ema: nn.Module, state: TrainState,
                    keep: int, meta: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint of ``state.step`` atomically, point ``latest`` at it, prune old ones."""
    root = checkpoints_root(run_dir)
    tmp = root / f".step-{state.step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        sha = atomic_torch_save(tmp / "state.pt", {"step": state.step, "optimizer": state.optimizer})
        save_model(tmp, model, ema, meta={**(meta or {}), "step": state.step}, digests={"state.pt": sha})
    except BaseException:  # a full disk, Ctrl-C: nothing partial stays; the earlier checkpoints do
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish(run_dir, tmp, keep)


def publish(run_dir: str | Path, tmp: Path, keep: int) -> Path:
    """Rename the complete ``.step-N.tmp`` into place, then point ``latest`` at it, then prune all but
    the ``keep`` newest checkpoints. Returns the checkpoint directory."""
    root = checkpoints_root(run_dir)
    final = root / tmp.name.removeprefix(".").removesuffix(".tmp")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_text(root / "latest", final.name + "\n")
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _complete(p: Path) -> bool:
    """A training checkpoint: its ``config.json`` (written last) and its state are there."""
    return (p / "config.json").is_file() and ((p / "state.pt").is_file() or is_sharded(p))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_NAME.fullmatch(p.name) and _complete(p)]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (``latest`` if valid, else the highest step found)."""
    root = checkpoints_root(run_dir)
    p = read_latest(root) if root.is_dir() else None
    if p is not None and _complete(p):
        return p
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, model: nn.Module, ema: nn.Module) -> TrainState:
    """Load weights into ``model`` and ``ema``; return the rest of the training state."""
    p = Path(path)
    load_weights(model, p / "model.safetensors")
    load_weights(ema, p / "ema.safetensors")
    if (p / "state.pt").is_file():
        verify_payload(p / "state.pt")
    try:
        raw = torch.load(p / "state.pt", map_location="cpu", weights_only=True)
        return TrainState(int(raw["step"]), raw["optimizer"])
    except FileNotFoundError:
        raise CheckpointError(f"{p}: state.pt missing") from None
    except pickle.UnpicklingError:  # weights_only refused an object: never retried unsafely
        raise CheckpointError(f"{p / 'state.pt'}: holds objects other than tensors and plain containers; "
                              "refused to unpickle it") from None
    except (RuntimeError, EOFError, OSError, KeyError, TypeError, ValueError) as e:  # a cut zip, wrong keys
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{p / 'state.pt'}: unreadable training state ({first})") from None
