"""What every objective is: ``objective(model, batch, step) → (loss, logs)``; ``logs`` holds
detached scalar tensors (no host sync per step; the loop averages them at log time)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from fastflow.data.base import Batch


class Objective(Protocol):
    #: the steps a model trained by this objective samples with (its training previews): 1 for one-step
    #: students, k for k-step distillation; None: a flow, previewed at ``train.sample_steps``
    preview_steps: int | None

    def __call__(self, model: nn.Module, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        ...


def objective_settings(objective: Any) -> dict[str, Any]:
    """What an objective computes with, every default filled in, as JSON values: its dataclass fields
    (samplers and schedules as their fields, functions by name, a network by its class), so two
    configs that spell the same objective differently compare equal, and a changed one does not."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, nn.Module) or callable(v):
            return getattr(v, "__name__", type(v).__name__)
        return v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)

    return {"objective": type(objective).__name__, **plain(objective)}


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in evaluation mode (no dropout; every stochastic layer deterministic) for the ``with``
    body, each submodule's own mode restored after it."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def drop_labels(label: Tensor | None, num_classes: int, p: float) -> Tensor | None:
    """Replace each label by the null label ``num_classes`` with probability ``p`` (CFG training)."""
    if label is None or p <= 0:
        return label
    drop = torch.rand(label.shape, device=label.device) < p
    return torch.where(drop, torch.full_like(label, num_classes), label)
