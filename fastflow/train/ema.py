"""Exponential moving average of weights with warm-up: ``decay = min(rate, (1 + n)/(10 + n))``."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(rate: float, n: int) -> float:
    """Decay used for the ``n``-th update (``n = 0`` first)."""
    return min(rate, (1 + n) / (10 + n))


class EMA:
    """Holds a frozen copy of ``model`` updated as ``θ_ema ← d·θ_ema + (1 − d)·θ``."""

    def __init__(self, model: nn.Module, rate: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.rate = rate

    @torch.no_grad()
    def update(self, model: nn.Module, n: int) -> float:
        d = ema_decay(self.rate, n)
        ema_p = list(self.model.parameters())
        src_p = list(model.parameters())
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for eb, b in zip(self.model.buffers(), model.buffers()):
            eb.copy_(b)
        return d
