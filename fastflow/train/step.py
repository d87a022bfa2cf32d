"""One optimiser step over the global batch: micro-batches, their noise, gradient sync, clipping.

The global batch ``train.batch_size`` is split into ``M = world × grad_accum`` equal micro-batches;
rank ``r`` runs micro-batches ``r·A … r·A + A − 1``. Micro-batch ``m`` of step ``s`` is the ``m``-th
slice of the stream's positions ``[s·B, (s+1)·B)`` (:class:`~fastflow.data.BatchStream` with ``M``
virtual ranks) and draws its noise (time, Gaussian noise, label dropout, dropout masks) from the
seed ``derive_seed(seed, "step s micro-batch m")``. Both are pure functions of ``(seed, s, m)``: two
ranks × one micro-batch and one rank × two micro-batches compute the same per-micro-batch losses,
and a resumed run needs no saved RNG state. Gradients are averaged over the global batch (each
micro-batch's loss is divided by ``A``; DDP/FSDP2 average over ranks) and synchronised once, after
the last micro-batch.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.data import BatchStream, Dataset
from fastflow.errors import ConfigError
from fastflow.utils.distributed import DistInfo, full
from fastflow.utils.seeding import derive_seed


def check_split(batch_size: int, world: int, grad_accum: int) -> None:
    if batch_size % (world * grad_accum):
        raise ConfigError(f"train.batch_size={batch_size} is not divisible by {world} rank(s) × "
                          f"train.grad_accum={grad_accum}")


@dataclass
class MicroBatches:
    """This rank's micro-batch streams and the global index of its first one."""

    streams: list[BatchStream]
    first: int
    total: int  # M = world × grad_accum
    seed: int

    @classmethod
    def build(cls, data: Dataset, batch_size: int, grad_accum: int, seed: int, info: DistInfo) -> MicroBatches:
        check_split(batch_size, info.world, grad_accum)
        total = info.world * grad_accum
        first = info.rank * grad_accum
        streams = [BatchStream(data, batch_size // total, seed, first + a, total) for a in range(grad_accum)]
        return cls(streams, first, total, seed)

    def seed_of(self, step: int, a: int) -> int:
        return derive_seed(self.seed, f"step {step} micro-batch {self.first + a}")


def _sync(net: nn.Module, model: nn.Module, last: bool) -> Any:
    """Gradient synchronisation only after the last micro-batch (DDP ``no_sync``; FSDP2's flag)."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(last)
        return nullcontext()
    no_sync = getattr(net, "no_sync", None)
    return nullcontext() if last or no_sync is None else no_sync()


def train_step(net: nn.Module, model: nn.Module, objective: Any, micro: MicroBatches, step: int,
               device: torch.device, amp: Any, opt: torch.optim.Optimizer, clip: float) -> dict[str, Tensor]:
    """Forward/backward every micro-batch, clip, step the optimiser. ``net`` is what is called
    (the DDP wrapper or ``model``). Returns the step's logs (detached, averaged over micro-batches)."""
    opt.zero_grad(set_to_none=True)
    n = len(micro.streams)
    sums: dict[str, Tensor] = {}
    for a, stream in enumerate(micro.streams):
        torch.manual_seed(micro.seed_of(step, a))
        batch = stream.batch(step).to(device)
        with _sync(net, model, a == n - 1):
            with amp:
                loss, logs = objective(net, batch, step)
            (loss / n if n > 1 else loss).backward()
        for k, v in logs.items():
            sums[k] = sums.get(k, 0) + v.detach().float() / n
    gnorm = full(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    opt.step()
    return {**sums, "grad_norm": gnorm.detach()}
