"""``fastflow checkpoint consolidate``: a sharded (FSDP2/DCP) checkpoint → the usual single-file
layout (``model.safetensors`` + ``ema.safetensors`` + ``config.json`` with their SHA-256), in one
process, whatever world size wrote the shards. Nothing is unpickled (:mod:`fastflow.models.sharded`)."""

from __future__ import annotations

from pathlib import Path

from fastflow.errors import ConfigError
from fastflow.models.checkpoint import model_of, read_config, resolve_checkpoint
from fastflow.models.sharded import is_sharded, read_sharded
from fastflow.utils.io import atomic_save_tensors, atomic_write_json, check_new_dir, staged_artifact


def consolidate(path: str | Path, out: str | Path | None = None) -> Path:
    """Write ``model``/``ema`` safetensors of the sharded checkpoint ``path`` (a run: its latest)
    beside its shards (default; ``config.json`` gains their digests, so the checkpoint both resumes
    and loads anywhere), or into the new directory ``out`` (a plain model checkpoint). Returns it."""
    d = resolve_checkpoint(path)
    if not is_sharded(d):
        raise ConfigError(f"{d} is not a sharded checkpoint (no dcp/): it loads as it is")
    cfg = read_config(d)
    digests = dict(cfg.get("sha256") or {})
    model = model_of(d, cfg)
    target = d if out is None else check_new_dir(out)
    target.mkdir(parents=True, exist_ok=True)
    sha = digests if out is None else {}
    meta = {**(cfg.get("meta") or {}), "consolidated_from": str(d.resolve())}
    with staged_artifact(target / "config.json") as staged:  # both files and the config, or none of them
        for part in ("model", "ema"):
            sha[f"{part}.safetensors"] = atomic_save_tensors(staged.parent / f"{part}.safetensors",
                                                             read_sharded(d, part, model, digests))
        atomic_write_json(staged, {**cfg, "meta": meta, "sha256": sha})
    return target
