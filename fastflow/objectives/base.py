"""What every objective is: ``objective(model, batch, step) → (loss, logs)``; ``logs`` holds
detached scalar tensors (no host sync per step; the loop averages them at log time)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from fastflow.data.base import Batch


class Objective(Protocol):
    def __call__(self, model: nn.Module, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        ...


def drop_labels(label: Tensor | None, num_classes: int, p: float) -> Tensor | None:
    """Replace each label by the null label ``num_classes`` with probability ``p`` (CFG training)."""
    if label is None or p <= 0:
        return label
    drop = torch.rand(label.shape, device=label.device) < p
    return torch.where(drop, torch.full_like(label, num_classes), label)
