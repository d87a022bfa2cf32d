"""Per-rank training memory: DDP vs FSDP2 at N ranks, with and without activation checkpointing.

**States** (computed from the model built on the meta device; P parameters, fp32 master weights):
DDP keeps on every rank weights 4P, gradients 4P, Adam's two moments 8P, the EMA 4P and DDP's
gradient buckets 4P bytes. FSDP2 divides weights, gradients, moments and EMA by N and adds its working
set: the all-gathered parameters of two units (the one running and the one prefetched) and the
unsharded gradient of one, in the compute dtype, plus the root's parameters (not resharded).

**Activations** (measured): one forward/backward at a reduced resolution on the CPU, counting the
bytes of the tensors autograd saves for the backward pass (``saved_tensors_hooks``; each storage
once, parameters excluded), attributed to the unit that saved them, then scaled by pixel count and
batch. With activation checkpointing a step holds what is saved outside the units, each unit's
input, and — while one unit is recomputed — that unit's own saved tensors (the largest one).
The scaling assumes memory linear in pixels: true for convolutions and for flash/memory-efficient
attention (what the CPU and CUDA SDPA kernels save), not for attention that materialises scores.
bf16 rows halve the fp32 activation measure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.errors import ConfigError
from fastflow.models.diffusers_dir import denoiser_from_config
from fastflow.models.presets import PRESETS, build_model, model_kind
from fastflow.train.parallel import units
from fastflow.utils.io import read_json

GB = 1e9


@dataclass
class Plan:
    """Parameter counts and measured activation bytes per sample at the full resolution."""

    name: str
    params: int
    largest_unit: int  # parameters of the largest FSDP2 unit
    root: int  # parameters outside every unit
    resolution: int
    act_bytes: float  # saved activations per sample, no checkpointing (fp32)
    act_ckpt_bytes: float  # with activation checkpointing (fp32)
    measured_at: int


def _model(source: str, resolution: int | None) -> tuple[nn.Module, str]:
    """A preset name or a diffusers denoiser config (JSON with ``_class_name``); ``resolution``
    overrides its sample size. Returns the model (random weights) and a display name."""
    if source in PRESETS:
        spec = {"preset": source, **({"resolution": resolution} if resolution else {})}
        return build_model(spec), source
    path = Path(source)
    try:
        cfg = read_json(path)
    except ConfigError as e:
        raise ConfigError(f"neither a preset ({', '.join(sorted(PRESETS))}) nor a readable diffusers config JSON: "
                          f"{e}") from None
    if resolution and isinstance(cfg, dict):
        cfg = {**cfg, "sample_size": resolution}
    return denoiser_from_config(cfg, source), path.parent.name + "/" + path.stem


def _inputs(model: nn.Module, batch: int, res: int) -> tuple[Tensor, Any]:
    cfg = model.config
    x = torch.randn(batch, cfg.in_channels, res, res)
    if getattr(cfg, "cross_attention_dim", None):  # diffusers text UNet
        return x, {"encoder_hidden_states": torch.randn(batch, 77, cfg.cross_attention_dim)}
    kind = model_kind(cfg) if hasattr(cfg, "channels") else "unconditional"
    if kind == "token":
        return x, {"cond": {"tokens": torch.randn(batch, 77, cfg.context_dim)}}
    if kind == "image":
        return x, {"cond": {"image": torch.randn(batch, cfg.cond_channels, res, res)}}
    return x, {}


def _run(model: nn.Module, batch: int, res: int) -> None:
    x, kw = _inputs(model, batch, res)
    t = torch.rand(batch)
    out = model(x, t * 999 if hasattr(model, "down_blocks") else t, **kw)
    out = out.sample if hasattr(out, "sample") else out
    out.float().square().mean().backward()


def saved_bytes(model: nn.Module, batch: int, res: int) -> tuple[float, float, dict[str, float]]:
    """``(total, outside units, per unit)`` bytes of tensors saved for backward, and unit inputs."""
    _, outer = units(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    current: list[str] = []
    per_unit: dict[str, float] = {n: 0.0 for n, _ in outer}
    inputs: dict[str, float] = {n: 0.0 for n, _ in outer}
    total = [0.0]

    def pack(t: Tensor) -> Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in seen and key not in params:
            seen.add(key)
            nbytes = t.untyped_storage().nbytes()
            total[0] += nbytes
            if current:
                per_unit[current[-1]] += nbytes
        return t

    hooks = []
    for name, m in outer:
        def pre(_m: nn.Module, args: tuple, name: str = name) -> None:
            current.append(name)
            inputs[name] += sum(a.untyped_storage().nbytes() for a in args if isinstance(a, Tensor))

        def post(*_: object) -> None:  # a hook that returned something would replace the output
            current.pop()

        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _run(model, batch, res)
    finally:
        for h in hooks:
            h.remove()
    outside = total[0] - sum(per_unit.values())
    return total[0], outside + sum(inputs.values()), per_unit


def plan(source: str, measure_res: int, batch: int = 2) -> Plan:
    """Count parameters on the meta device, measure activations at ``measure_res``."""
    params, largest, root, full_res, name = parameter_counts(source)
    model, _ = _model(source, measure_res)
    total, ckpt_outside, per_unit = saved_bytes(model, batch, measure_res)
    scale = (full_res / measure_res) ** 2 / batch
    ckpt = ckpt_outside + max(per_unit.values()) if per_unit else total
    return Plan(name, params, largest, root, full_res, total * scale, ckpt * scale, measure_res)


def parameter_counts(source: str) -> tuple[int, int, int, int, str]:
    """``(parameters, largest unit, outside units, resolution, name)`` from the model on the meta device."""
    with torch.device("meta"):
        meta, name = _model(source, None)
    inner, outer = units(meta)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    params = count(meta)
    nested = {id(m) for _, m in inner}

    def own(m: nn.Module) -> int:  # what FSDP2 gathers for the unit: not its nested units' parameters
        return count(m) - sum(count(c) for c in m.modules() if id(c) in nested and c is not m)

    largest = max([own(m) for _, m in [*inner, *outer]], default=params)
    res = int(getattr(meta.config, "resolution", None) or meta.config.sample_size)
    return params, largest, params - sum(count(m) for _, m in outer), res, name


def per_rank(p: Plan, mode: str, ranks: int, ckpt: bool, precision: str, micro_batch: int) -> dict[str, Any]:
    """One row of the table: bytes per rank by part and in total."""
    compute = 2 if precision == "bf16" else 4
    shard = ranks if mode == "fsdp2" else 1
    row = {"model": p.name, "parallel": mode, "ranks": ranks, "precision": precision,
           "activation_checkpointing": "blocks" if ckpt else "none", "micro_batch": micro_batch,
           "params_gb": 4 * p.params / shard / GB, "grads_gb": 4 * p.params / shard / GB,
           "adam_gb": 8 * p.params / shard / GB, "ema_gb": 4 * p.params / shard / GB}
    row["buffers_gb"] = (4 * p.params if mode == "ddp" else (3 * p.largest_unit + p.root) * compute) / GB
    act = (p.act_ckpt_bytes if ckpt else p.act_bytes) * micro_batch * compute / 4
    row["activations_gb"] = act / GB
    row["total_gb"] = sum(v for k, v in row.items() if k.endswith("_gb"))
    return row


def memory_table(source: str, ranks: list[int], micro_batch: int, measure_res: int,
                 precisions: tuple[str, ...] = ("fp32", "bf16")) -> tuple[Plan, list[dict[str, Any]]]:
    p = plan(source, measure_res)
    rows = [per_rank(p, mode, n, ckpt, prec, micro_batch)
            for prec in precisions for ckpt in (False, True) for mode in ("ddp", "fsdp2") for n in ranks
            if not (mode == "ddp" and prec == "bf16")]
    return p, rows
