"""torchrun detection: NCCL on CUDA, gloo on CPU. Single-process runs need no launcher."""

from __future__ import annotations

import gc
import importlib
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


def init_distributed(group_of_one: bool = False) -> DistInfo:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1). With
    ``group_of_one`` a single process gets a group of its own (FSDP2 and sharded checkpoints then
    run the same code at every world size, no launcher needed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if (world > 1 or group_of_one) and not dist.is_initialized():
        # torch._dynamo (imported by DDP) keeps references to a default group that exists when it is
        # first imported, so destroy_process_group could not free it: import it first.
        importlib.import_module("torch._dynamo")
        backend = "nccl" if cuda else "gloo"
        if world > 1:
            dist.init_process_group(backend, **_elastic_store(rank, world))
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistInfo(rank, world, local, device)


def _elastic_store(rank: int, world: int) -> dict:
    """Under torchrun's agent store, the store of this restart round: the agent keeps one store over
    restarts, and a restarted group would otherwise read the killed round's addresses (gloo:
    "connectFullMesh failed … Connection refused"). Elsewhere ``{}``: the env:// default."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    from datetime import timedelta

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timedelta(minutes=10))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": dist.PrefixStore(f"fastflow/attempt-{attempt}", store), "rank": rank, "world_size": world}


def shutdown_distributed() -> None:
    """Destroy the process group and free it while the interpreter is still alive.

    Otherwise gloo's worker threads outlive it: one that releases its last collective's tensors
    after interpreter shutdown has begun cannot take the GIL and aborts the process
    ("terminate called without an active exception") after a successful run.
    """
    if dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()  # DDP's reference cycles hold the group until collected


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 (DTensor) tensor, or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank calls it), or the tensor itself."""
    full_tensor = getattr(t, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else t
