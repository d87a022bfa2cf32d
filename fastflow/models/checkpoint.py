"""Model checkpoints: a directory with ``config.json`` + ``model.safetensors``
(+ ``ema.safetensors``). Nothing is unpickled. ``config.json`` records the SHA-256 of every
payload file (taken from the bytes written, before the atomic rename); every load verifies it, so
a flipped bit is a :class:`CheckpointError` naming the file, never silently different weights.
Checkpoints written before digests load with a one-time warning.

:func:`read_record` reads what a checkpoint *is* — architecture, conditioning kind, classes,
training objective, OFTSR's ``sigma_p`` and scale, digests — once, into a typed
:class:`CheckpointRecord` that the CLI, export and recipes use instead of guessing."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from fastflow import __version__
from fastflow.data.sr import DEFAULT_SCALE
from fastflow.errors import CheckpointError, ConfigError
from fastflow.flow.sr import DEFAULT_SIGMA_P
from fastflow.models.presets import arch_of, build_model, model_kind
from fastflow.models.sharded import SHARDS, is_sharded, read_sharded
from fastflow.utils.io import atomic_save_tensors, atomic_write_json, file_digest, read_json

FORMAT = "fastflow-model"
log = logging.getLogger("fastflow.checkpoint")
_warned_legacy: set[Path] = set()
#: Training checkpoints are ``<run>/checkpoints/step-XXXXXXXX``.
STEP_NAME = re.compile(r"step-(\d{8})")


def save_model(directory: str | Path, model: nn.Module, ema: nn.Module | None = None,
               meta: dict[str, Any] | None = None, digests: dict[str, str] | None = None) -> Path:
    """Write ``model.safetensors``, ``ema.safetensors`` (if given), then ``config.json`` with their
    SHA-256 (and the ``digests`` of other payload files already written to the directory)."""
    d = Path(directory)
    sha = {**(digests or {}), "model.safetensors": atomic_save_tensors(d / "model.safetensors", model.state_dict())}
    if ema is not None:
        sha["ema.safetensors"] = atomic_save_tensors(d / "ema.safetensors", ema.state_dict())
    return write_config(d, model, meta, sha)


def write_config(directory: str | Path, model: nn.Module, meta: dict[str, Any] | None,
                 digests: dict[str, str]) -> Path:
    """``config.json``: what the checkpoint is (architecture, model config, meta) and the SHA-256 of
    every payload file in it. Written last: a directory without it is no checkpoint."""
    d = Path(directory)
    atomic_write_json(d / "config.json", {"format": FORMAT, "fastflow_version": __version__,
                                          "arch": arch_of(model), "model": model.config.to_dict(),
                                          "meta": meta or {}, "sha256": digests})
    return d


def verify_payload(path: str | Path) -> None:
    """Check a checkpoint payload file against the SHA-256 its directory's ``config.json`` records
    (a file outside a checkpoint directory has nothing to check against)."""
    p = Path(path)
    if not (p.parent / "config.json").is_file():
        return
    digests = read_config(p.parent).get("sha256")
    if digests is None:
        if p.parent not in _warned_legacy:
            _warned_legacy.add(p.parent)
            log.warning("%s: checkpoint written before SHA-256 digests; its files cannot be verified "
                        "(re-save it to add them)", p.parent)
        return
    if p.name not in digests:
        raise CheckpointError(f"{p}: not listed in config.json's digests (file added or renamed?)")

    if file_digest(p) != digests[p.name]:
        raise CheckpointError(f"{p}: SHA-256 mismatch with config.json (truncated, corrupted or modified file)")


def read_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory (validated)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (not a fastflow checkpoint directory)")
    cfg = read_json(path, CheckpointError)
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or "model" not in cfg:
        raise CheckpointError(f"{path}: not a {FORMAT} config")
    return cfg


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file (verified against its checkpoint's digest), turning truncation or
    corruption into :class:`CheckpointError`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: file not found")
    verify_payload(p)
    try:
        return load_file(str(p), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: unreadable or truncated safetensors file ({e})") from None


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict from safetensors into ``model``, checking names, shapes and dtypes exactly."""
    state = load_state(path)
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    dtype = [k for k in own if k in state and own[k].dtype != state[k].dtype]
    if missing or extra or bad or dtype:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:3]}{'…' if len(extra) > 3 else ''}")
        if bad:
            k = bad[0]
            parts.append(f"shape of {k} is {tuple(state[k].shape)}, config wants {tuple(own[k].shape)}")
        if dtype:
            k = dtype[0]
            parts.append(f"{k} is {str(state[k].dtype).removeprefix('torch.')}, the architecture holds "
                         f"{str(own[k].dtype).removeprefix('torch.')}")
        raise CheckpointError(f"{path}: weights do not match config.json ({'; '.join(parts)})")
    model.load_state_dict(state)


def checkpoints_root(run_dir: str | Path) -> Path:
    """``<run>/checkpoints``, refusing a path there that is not a directory (a file, or a broken or
    self-looping symlink would otherwise read as "no checkpoints" and restart training from 0)."""
    root = Path(run_dir) / "checkpoints"
    if os.path.lexists(root) and not root.is_dir():
        raise CheckpointError(f"{root} is not a directory (a file, or a broken or looping symlink)")
    return root


def read_latest(root: Path) -> Path | None:
    """The checkpoint directory ``root/latest`` names (``None`` when there is no pointer)."""
    pointer = root / "latest"
    if not os.path.lexists(pointer):
        return None
    try:
        name = pointer.read_bytes().decode("ascii").strip()
    except OSError as e:
        raise CheckpointError(f"{pointer}: unreadable ({e.strerror or e})") from None
    except UnicodeDecodeError:
        name = ""
    if not STEP_NAME.fullmatch(name):
        raise CheckpointError(f"{pointer}: corrupted (not a checkpoint name); delete it to use the newest "
                              "complete checkpoint")
    return root / name


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory as given, or a training run directory → its newest checkpoint
    (the one ``checkpoints/latest`` names, else the highest step)."""
    p = Path(path)
    if (p / "config.json").is_file():
        return p
    root = checkpoints_root(p)
    latest = read_latest(root) if root.is_dir() else None
    if latest is not None and (latest / "config.json").is_file():
        return latest
    found = sorted(q for q in root.glob("step-*") if (q / "config.json").is_file()) if root.is_dir() else []
    if not found:
        raise CheckpointError(f"{path}: neither a checkpoint directory nor a run with checkpoints")
    return found[-1]


def weights_file(directory: Path, weights: str = "ema") -> Path:
    """The safetensors file ``load_model`` reads: ``ema`` falls back to ``model`` when absent."""
    if weights not in ("ema", "model"):
        raise ConfigError(f"weights must be 'ema' or 'model', got {weights!r}")
    file = directory / f"{weights}.safetensors"
    return file if file.exists() or weights == "model" else directory / "model.safetensors"


def weights_source(directory: Path, weights: str = "ema") -> tuple[str, str]:
    """``(name, SHA-256)`` of the weights :func:`load_model` reads, for provenance records: the
    safetensors file, or for a sharded checkpoint not consolidated ``dcp/<weights>`` and the
    SHA-256 of its shards' digests (checked at load)."""
    file = weights_file(directory, weights)
    if file.exists() or not is_sharded(directory):
        return file.name, read_config(directory).get("sha256", {}).get(file.name) or file_digest(file)
    digests = read_config(directory).get("sha256") or {}
    lines = "".join(f"{k}:{v}\n" for k, v in sorted(digests.items()) if k.startswith(f"{SHARDS}/"))
    return f"{SHARDS}/{weights}", hashlib.sha256(lines.encode()).hexdigest()


def model_of(directory: Path, cfg: dict[str, Any]) -> nn.Module:
    """The architecture a checkpoint's ``config.json`` (``cfg``) describes, with fresh weights."""
    try:
        return build_model({"arch": cfg.get("arch", "unet"), **cfg["model"]})
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: invalid model config ({e})") from None


def load_model(directory: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> nn.Module:
    """Build the model from ``config.json`` and load ``ema`` (default, falls back to ``model``
    when the checkpoint has no EMA) or ``model`` weights: from safetensors, or from the shards of
    an FSDP2 checkpoint not yet consolidated (reassembled in this process). Returns it in eval mode."""
    d = resolve_checkpoint(directory)
    cfg = read_config(d)
    model = model_of(d, cfg)
    file = weights_file(d, weights)
    if not file.exists() and is_sharded(d):
        model.load_state_dict(read_sharded(d, weights, model, cfg.get("sha256") or {}))
    else:
        load_weights(model, file)
    return model.to(device).eval()


@dataclass(frozen=True)
class CheckpointRecord:
    """What a checkpoint is, read once from its ``config.json``."""

    path: Path
    arch: str
    kind: str  # models.presets.model_kind: unconditional, class, token or image
    num_classes: int
    objective: str | None  # the training objective's name; None for a model saved outside training
    objective_config: dict[str, Any]
    data_config: dict[str, Any]
    sigma_p: float | None  # image-conditioned (OFTSR) flows: noise of the start state
    sr_scale: int | None  # trained on data.name=sr: the super-resolution factor
    digests: dict[str, str]

    @property
    def oftsr_student(self) -> bool:
        return self.objective == "oftsr"

    def oftsr_scale(self) -> int:
        """The super-resolution factor of an OFTSR student; a :class:`ConfigError` naming what this is otherwise."""
        if self.oftsr_student and self.sr_scale is not None:
            return self.sr_scale
        what = ("an SR teacher: use the OFTSR student distilled from it" if self.sr_scale is not None
                else f"objective {self.objective!r}, no super-resolution training data")
        raise ConfigError(f"{self.path} is not an OFTSR student ({what})")

    @property
    def teacher(self) -> str | None:
        return self.objective_config.get("teacher")


def _section(meta: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = meta.get(key) or {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: meta.{key} is not a mapping")
    return value


def read_record(directory: str | Path) -> CheckpointRecord:
    """The :class:`CheckpointRecord` of a checkpoint directory (or a run's latest checkpoint)."""
    d = resolve_checkpoint(directory)
    cfg = read_config(d)
    path = d / "config.json"
    meta = cfg.get("meta") or {}
    if not isinstance(meta, dict) or not isinstance(cfg["model"], dict):
        raise CheckpointError(f"{path}: meta and model must be mappings")
    obj, data = _section(meta, "objective_config", path), _section(meta, "data_config", path)
    kind = model_kind(SimpleNamespace(**cfg["model"]))
    try:
        sigma_p = float(obj.get("sigma_p", DEFAULT_SIGMA_P)) if kind == "image" else None
        scale = int(data.get("scale", DEFAULT_SCALE)) if data.get("name") == "sr" else None
        classes = int(cfg["model"].get("num_classes", 0))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed sigma_p, scale or num_classes ({e})") from None
    if sigma_p is not None and not (math.isfinite(sigma_p) and 0 <= sigma_p < 1):
        raise CheckpointError(f"{path}: sigma_p must be in [0, 1), got {sigma_p}")
    return CheckpointRecord(d, str(cfg.get("arch", "unet")), kind, classes, obj.get("name") or meta.get("objective"),
                            obj, data, sigma_p, scale, dict(cfg.get("sha256") or {}))
