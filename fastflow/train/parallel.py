"""How a model is laid out for training: one process, DDP, or FSDP2 (``train.parallel``), with
activation checkpointing (``train.activation_checkpointing``).

**Units.** FSDP2 shards, and activation checkpointing recomputes, per *unit*: a fastflow UNet's
residual and attention blocks; a diffusers UNet's down/mid/up blocks (with their transformer blocks
sharded inside them); a diffusers transformer's blocks. What is left (embeddings, the first and last
convolutions) is sharded with the root. An MLP has no units: its parameters shard as one group.

**Construction.** A fastflow architecture is built on the meta device; under FSDP2 each unit is then
materialised, initialised (:func:`fastflow.models.init.init_weights`: seeded per module, so the
weights equal those of a model built whole), given its fused kernels and sharded before the next
one, so a rank never holds more than its shards plus one block. A diffusers denoiser (``arch: sd``)
arrives with its weights from diffusers' own (meta-device) loader and is sharded after.

**Precision** (FSDP2, ``train.precision``): ``fp32`` throughout, or ``bf16`` parameters and compute
with fp32 gradient reduction (``MixedPrecisionPolicy``); ``train.cpu_offload`` keeps shards,
gradients and optimiser states in host memory (CUDA only).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fastflow.errors import ConfigError
from fastflow.fused import apply as apply_fused
from fastflow.models.init import init_weights, reset_module
from fastflow.models.presets import build_model, resolve_spec
from fastflow.models.unet import UNet
from fastflow.objectives.base import LoopSupport
from fastflow.utils.distributed import DistInfo

PARALLEL = ("ddp", "fsdp2")
PRECISIONS = ("fp32", "bf16")
ACTIVATION_CHECKPOINTING = ("none", "blocks")


def _diffusers_units(net: nn.Module, prefix: str) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """(inner units: transformer blocks; outer units: down/mid/up blocks) of a diffusers denoiser."""
    outer = [(f"{prefix}down_blocks.{i}", b) for i, b in enumerate(getattr(net, "down_blocks", []))]
    if getattr(net, "mid_block", None) is not None:
        outer.append((f"{prefix}mid_block", net.mid_block))
    outer += [(f"{prefix}up_blocks.{i}", b) for i, b in enumerate(getattr(net, "up_blocks", []))]
    inner = [(f"{prefix}{n}", m) for n, m in net.named_modules()
             if type(m).__name__.endswith("TransformerBlock") and n]
    if not outer:  # a transformer denoiser: its blocks are the units
        return [], inner
    return inner, outer


def units(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """``(inner, outer)`` units by qualified name: FSDP2 shards both (inner first); activation
    checkpointing wraps the outer ones."""
    if isinstance(model, UNet):
        return [], [(f"{part}.{i}", m) for part in ("down", "mid", "up")
                    for i, m in enumerate(getattr(model, part))]
    net = getattr(model, "unet", None)
    if isinstance(net, nn.Module):  # SDVelocity around a diffusers denoiser
        return _diffusers_units(net, "unet.")
    if hasattr(model, "down_blocks") or hasattr(model, "transformer_blocks"):  # a bare diffusers denoiser
        return _diffusers_units(model, "")
    return [], []


def _checkpointed(forward: Any, *args: Any, **kwargs: Any) -> Any:
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_activations(model: nn.Module) -> int:
    """Recompute each outer unit's activations in the backward pass instead of storing them
    (``torch.utils.checkpoint``, non-reentrant); returns how many units. Gradients are unchanged."""
    _, outer = units(model)
    if not outer:
        raise ConfigError(f"train.activation_checkpointing=blocks: {type(model).__name__} has no blocks to "
                          "checkpoint (fastflow UNets and diffusers denoisers do)")
    for _, m in outer:
        m.forward = functools.partial(_checkpointed, m.forward)
    return len(outer)


def fsdp_kwargs(info: DistInfo, precision: str, cpu_offload: bool) -> dict[str, Any]:
    """``fully_shard`` settings: a 1-D mesh over every rank, the precision and offload policies."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    if cpu_offload and info.device.type != "cuda":
        raise ConfigError("train.cpu_offload moves shards from GPU to host memory; this run is on the CPU already")
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if precision == "bf16" else MixedPrecisionPolicy())
    return {"mesh": init_device_mesh(info.device.type, (info.world,)), "mp_policy": mp,
            "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}


def _outside(model: nn.Module, names: list[str]) -> list[tuple[str, nn.Module]]:
    """Modules of ``model`` not inside any of the units ``names``."""
    return [(n, m) for n, m in model.named_modules()
            if not any(n == u or n.startswith(u + ".") for u in names)]


def build(spec: dict[str, Any], fused: str, info: DistInfo, seed: int, shard: dict[str, Any] | None = None,
          check: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """The model for training on ``info.device``, sharded when ``shard`` (:func:`fsdp_kwargs`) is
    given: a fastflow architecture initialised by :func:`init_weights` (``seed``), unit by unit when
    sharded; a diffusers denoiser with the weights of its folder. ``check(model)`` runs on the
    constructed model before anything is materialised or swapped (e.g. does it fit the data)."""
    arch, _ = resolve_spec(spec)
    check = check or (lambda m: None)
    if arch == "sd":
        model = build_model(spec)
        check(model)
        model.to(info.device)
        apply_fused(model, fused, info.device, inference=False)
        if shard is not None:
            shard_model(model, shard)
        return model
    with torch.device("meta"):
        model = build_model(spec)
    check(model)
    params = sum(p.numel() for p in model.parameters())  # one decision for every unit (auto sizes the model)
    swap = lambda m: apply_fused(m, fused, info.device, inference=False, params=params)  # noqa: E731
    if shard is None:
        _materialise(model, seed, "", info.device)
        swap(model)
        return model
    from torch.distributed.fsdp import fully_shard

    _, outer = units(model)
    for name, unit in outer:
        _materialise(unit, seed, name, info.device)
        swap(unit)
        fully_shard(unit, **shard)
    rest = _outside(model, [n for n, _ in outer])
    for _, m in rest:
        m.to_empty(device="cpu", recurse=False)
    for name, m in reversed(rest):  # children before parents, as init_weights does
        reset_module(m, seed, name)
    for _, m in rest:
        m._apply(lambda t: t.to(info.device), recurse=False)
    swap(model)
    fully_shard(model, **shard)
    return model


def _materialise(module: nn.Module, seed: int, name: str, device: torch.device) -> None:
    """Meta → initialised on the CPU (the same numbers whatever the device) → ``device``."""
    module.to_empty(device="cpu")
    init_weights(module, seed, prefix=name)
    module.to(device)


def shard_model(model: nn.Module, shard: dict[str, Any]) -> None:
    """``fully_shard`` every unit (inner before outer), then the root."""
    from torch.distributed.fsdp import fully_shard

    inner, outer = units(model)
    for _, m in [*inner, *outer]:
        fully_shard(m, **shard)
    fully_shard(model, **shard)


def check_options(parallel: str, precision: str, activation_checkpointing: str, grad_accum: int) -> None:
    if parallel not in PARALLEL:
        raise ConfigError(f"train.parallel must be one of {PARALLEL}, got {parallel!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "fp32" and parallel != "fsdp2":
        raise ConfigError("train.precision sets FSDP2's mixed-precision policy (train.parallel=fsdp2); "
                          "under DDP use train.amp=bf16")
    if activation_checkpointing not in ACTIVATION_CHECKPOINTING:
        raise ConfigError(f"train.activation_checkpointing must be one of {ACTIVATION_CHECKPOINTING}, "
                          f"got {activation_checkpointing!r}")
    if grad_accum < 1:
        raise ConfigError(f"train.grad_accum must be >= 1, got {grad_accum}")


def loop_support(parallel: str, activation_checkpointing: str) -> LoopSupport:
    """What this run's model wrapping offers objectives: a joint forward-mode pass except under FSDP2
    (its sharded blocks' autograd Functions have no forward-mode rule) and with activation
    checkpointing (its recomputation is not replayed with dual tensors)."""
    return LoopSupport(joint_jvp=parallel != "fsdp2" and activation_checkpointing != "blocks")
