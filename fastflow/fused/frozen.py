"""``apply_frozen(net, mode)``: the inference path of a network that is only ever evaluated — a
training objective's teacher or guide, a pair teacher — and the check that it computes what eager
PyTorch does. Every caller that runs a frozen network (the training loop, ``fastflow pairs``, the
recipes' pair stages) takes it from here.

The network gets :func:`~fastflow.fused.switch.apply`'s kernels for inference (the CPU block kernel
on a CPU where ``auto`` picks it, Triton on CUDA) and computes in float32 whatever autocast its caller
runs under (a ``train.amp=bf16`` step): its outputs are an objective's targets, and the CPU kernel takes
float32. Both hold through ``copy.deepcopy`` (forward hooks, not a patched method).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from fastflow.fused.switch import FusedDecision, apply
from fastflow.models.presets import random_inputs


def _float32(v: Any) -> Any:
    return v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v


class Float32Forward:
    """Forward hooks that run a module with autocast off and its floating-point inputs as float32."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.open: list[torch.autocast] = []

    def before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        ctx = torch.autocast(self.device_type, enabled=False)
        ctx.__enter__()
        self.open.append(ctx)
        return tree_map(_float32, args), tree_map(_float32, kwargs)

    def after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.open.pop().__exit__(None, None, None)

    def attach(self, module: nn.Module) -> None:
        module.register_forward_pre_hook(self.before, with_kwargs=True)
        module.register_forward_hook(self.after, always_call=True)


def apply_frozen(net: nn.Module, mode: str, device: torch.device | str, batch: int = 8) -> tuple[FusedDecision, float]:
    """Put ``mode``'s inference kernels into the frozen fastflow network ``net`` (in evaluation
    mode, no gradients) and make it compute in float32. Returns the switch's decision and the largest
    ``|Δ|`` between its output and the eager output on a random batch (0 when nothing was swapped)."""
    device = torch.device(device)
    net.eval().requires_grad_(False)
    Float32Forward(device.type).attach(net)
    inputs = random_inputs(net, batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = net(*inputs)
        decision = apply(net, mode, device, inference=True)
        return decision, float((net(*inputs) - eager).abs().max()) if decision.active else 0.0
