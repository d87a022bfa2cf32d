"""What the Triton kernels can run on, and the one-time fallback warning."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from torch import Tensor
from torch.library import wrap_triton

from fastflow.errors import MissingBackendError

log = logging.getLogger("fastflow.fused")
_warned: set[str] = set()


def interpreting() -> bool:
    """``TRITON_INTERPRET=1``: kernels run on CPU tensors through Triton's interpreter (tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


TRITON = importlib.util.find_spec("triton") is not None


def _kernels_run_on(x: Tensor) -> bool:
    return x.is_cuda or (x.device.type == "cpu" and interpreting())


def kernel_device(x: Tensor) -> bool:
    """Whether the kernels should take ``x``: Triton is there and ``x`` lives where they run (CUDA,
    or CPU under the interpreter). A graph being exported keeps them as the registered op too: what
    an artefact carries is decided by what :func:`fastflow.export.export_checkpoint` swaps in (formats
    that cannot keep the kernels get the unswapped model), not by a flag around the export."""
    return TRITON and _kernels_run_on(x)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@cache
def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def require_kernel_device(x: Tensor, op: str) -> None:
    """The raw ``torch.ops.fastflow`` kernels run on CUDA, or on CPU under the interpreter."""
    if not _kernels_run_on(x):
        raise MissingBackendError(f"fastflow::{op} runs on CUDA tensors (CPU only with TRITON_INTERPRET=1); "
                         f"use fastflow.fused.{op.rsplit('_', 1)[0]}, which falls back to the reference")


def flat_spatial(t: Tensor) -> bool:
    """Whether ``[N, C, *spatial]`` reads as ``[N, C, HW]`` with one spatial stride (NCHW or
    channels-last dense, or broadcast)."""
    return all(t.shape[i] == 1 or t.stride(i) == t.stride(i + 1) * t.shape[i + 1] for i in range(2, t.dim() - 1))


def warn_once(key: str, msg: str) -> None:
    """Log ``msg`` the first time ``key`` falls back to the reference."""
    if key not in _warned:
        _warned.add(key)
        log.warning("fastflow.fused: %s; using the PyTorch reference", msg)


@dataclass
class Launch:
    """One kernel launch of an op: what the op runs, and what ``fastflow bench codegen`` compiles
    for each GPU arch (the same arguments, so the same specialisation)."""

    kernel: Any  # a @triton.jit or @triton.autotune kernel
    grid: Callable[[dict[str, Any]], tuple[int, ...]]
    args: tuple[Any, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> None:
        wrap_triton(self.kernel)[self.grid](*self.args, **self.meta)
