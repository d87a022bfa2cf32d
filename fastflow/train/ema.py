"""Exponential moving average of weights with warm-up: ``decay = min(rate, (1 + n)/(10 + n))``."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from fastflow.utils.distributed import local


def ema_decay(rate: float, n: int) -> float:
    """Decay used for the ``n``-th update (``n = 0`` first)."""
    return min(rate, (1 + n) / (10 + n))


class EMA:
    """A frozen copy of ``model`` updated as ``θ_ema ← d·θ_ema + (1 − d)·θ``. Under FSDP2 pass
    ``copy_into``: a model sharded like ``model`` (its values are overwritten); the update then runs
    shard by shard, element for element the same arithmetic."""

    def __init__(self, model: nn.Module, rate: float, copy_into: nn.Module | None = None) -> None:
        if copy_into is None:
            self.model = copy.deepcopy(model)
        else:
            self.model = copy_into
            self.copy_from(model)
        self.model.eval().requires_grad_(False)
        self.rate = rate

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """``θ_ema ← θ`` (shard by shard under FSDP2)."""
        torch._foreach_copy_(self._params(self.model), self._params(model))
        for eb, b in zip(self.model.buffers(), model.buffers(), strict=True):
            eb.copy_(b)

    @staticmethod
    def _params(m: nn.Module) -> list[Tensor]:
        return [local(p) for p in m.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module, n: int) -> float:
        d = ema_decay(self.rate, n)
        torch._foreach_lerp_(self._params(self.model), self._params(model), 1.0 - d)
        for eb, b in zip(self.model.buffers(), model.buffers(), strict=True):
            eb.copy_(b)
        return d
