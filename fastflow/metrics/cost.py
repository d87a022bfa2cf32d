"""Model cost: parameter count and FLOPs of one forward pass (``torch.utils.flop_counter``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, x: torch.Tensor, cond: object = None) -> int:
    """FLOPs (multiply-add = 2) of ``model(x, t, cond)`` for the batch ``x``."""
    t = torch.full((x.shape[0],), 0.5, device=x.device)
    with FlopCounterMode(display=False) as counter:
        model(x, t, cond)
    return int(counter.get_total_flops())
