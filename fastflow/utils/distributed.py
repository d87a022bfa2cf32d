"""torchrun detection: NCCL on CUDA, gloo on CPU. Single-process runs need no launcher."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistInfo(rank, world, local, device)


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def gather_bytes(info: DistInfo, t: torch.Tensor) -> list[torch.Tensor]:
    """All ranks' copies of a uint8 tensor of equal length (e.g. RNG states)."""
    if info.world == 1:
        return [t]
    t = t.to(info.device)
    out = [torch.empty_like(t) for _ in range(info.world)]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]
