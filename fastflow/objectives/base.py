"""What every objective is, and all the training loop and its previews may ask of one
(:class:`Objective`): ``objective(model, batch, step) → (loss, logs)`` (``logs``: detached scalar
tensors, no host sync per step; the loop averages them at log time), the model it needs, the frozen
networks it calls, how its model is previewed, and what it does with what the loop can offer
(:class:`LoopSupport`). Objectives know nothing of DDP or FSDP2."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from fastflow.data.base import Batch
from fastflow.flow.guidance import Cond
from fastflow.objectives.options import default_of


@dataclass(frozen=True)
class LoopSupport:
    """What the training loop offers an objective for this run. ``joint_jvp``: one forward-mode pass
    can also record the backward graph (not under FSDP2, whose sharded blocks have no forward-mode
    rule, nor with activation checkpointing, whose recomputation drops the dual tensors)."""

    joint_jvp: bool = True


class Objective(Protocol):
    #: the steps a model trained by this objective samples with (its training previews): 1 for one-step
    #: students, k for k-step distillation; None: a flow, previewed at ``train.sample_steps``
    preview_steps: int | None
    #: the model it trains: 1, a velocity ``v(x, t)``; 2, an average velocity ``u(x, s, t)`` (``model.times``)
    model_times: int
    #: why its training step cannot be compiled (``train.compile``), or ``""`` when it can
    not_compilable: str

    def frozen(self) -> dict[str, nn.Module]:
        """The networks it calls without training them (``teacher``): the loop checks that they generate
        what the student does and gives them the run's kernels."""
        ...

    def sample_inputs(self, batch: Batch) -> tuple[Tensor, Cond] | None:
        """Preview start states and conditions made from a data batch (image-conditioned models);
        None: previews start from noise (and class labels)."""
        ...

    def preview(self, model: nn.Module, z: Tensor, cond: Cond) -> tuple[Tensor, str] | None:
        """Preview samples from the starts and their caption; None: Euler at :attr:`preview_steps`."""
        ...

    def bind(self, support: LoopSupport) -> Objective:
        """This objective for a run that offers ``support`` (the training layer calls it once)."""
        ...

    def __call__(self, model: nn.Module, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        ...


class ObjectiveDefaults:
    """The :class:`Objective` protocol's defaults; an objective overrides what differs."""

    model_times: ClassVar[int] = 1
    not_compilable: ClassVar[str] = ""
    #: options of a base class that mean nothing to this one (not accepted in its config)
    hidden_options: ClassVar[tuple[str, ...]] = ()
    #: ``(holds(options), message)``: conditions over several options (every default filled in)
    checks: ClassVar[tuple[tuple[Any, str], ...]] = ()

    def frozen(self) -> dict[str, nn.Module]:
        return {}

    def sample_inputs(self, batch: Batch) -> tuple[Tensor, Cond] | None:
        return None

    def preview(self, model: nn.Module, z: Tensor, cond: Cond) -> tuple[Tensor, str] | None:
        return None

    def bind(self, support: LoopSupport) -> Objective:
        return self  # type: ignore[return-value]


def objective_settings(objective: Any) -> dict[str, Any]:
    """What an objective computes with, every default filled in, as JSON values: its dataclass fields
    (samplers and schedules as their fields, functions by name, a network by its class), so two
    configs that spell the same objective differently compare equal, and a changed one does not.
    Fields made with ``compare=False`` (what the run offers, which weights a recorded teacher had) are
    not settings."""
    return {"objective": type(objective).__name__, **plain(objective)}


def setting_defaults(objective: Any) -> dict[str, Any]:
    """Each setting's default (as JSON values): what an option added after a checkpoint was written
    must equal for that checkpoint's run to continue unchanged (``train.resume``)."""
    return {f.name: plain(default_of(f)) for f in dataclasses.fields(objective) if f.compare}


def plain(v: Any) -> Any:
    """A field's value as JSON: dataclasses as their compared fields, functions and networks by name."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.compare}
    if isinstance(v, (tuple, list)):
        return [plain(x) for x in v]
    if isinstance(v, nn.Module) or callable(v):
        return getattr(v, "__name__", type(v).__name__)
    return v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)


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
