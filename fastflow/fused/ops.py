"""The fused ops as functions: the Triton kernel where it runs, else the PyTorch reference.

CPU tensors (without ``TRITON_INTERPRET=1``) and graphs being exported take the reference
silently — that is their intended path. Inputs the kernels do not take on a kernel device
(fp64, bf16 under the interpreter, spatial strides that do not flatten, head dims over 256)
take the reference with a one-time warning, never a wrong result; empty inputs (a batch, a
sequence or a spatial size of 0) take it silently, as ``nn.GroupNorm`` and SDPA define them. So does forward-mode AD
(``torch.func.jvp``, ``torch.autograd.forward_ad``) and any other functorch transform: the
kernels have a backward but no forward-mode rule, and the reference's JVP is exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastflow.errors import DTypeError, ShapeError
from fastflow.fused.attention import attention_fwd
from fastflow.fused.groupnorm import group_norm_fwd
from fastflow.fused.runtime import flat_spatial, interpreting, kernel_device, warn_once
from fastflow.models.reference import attention_ref, forward_ad, group_norm_ref

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: the attention kernel splits head dims up to this into one or two power-of-two tiles
MAX_HEAD_DIM = 256


def _floating(op: str, x: Tensor) -> None:
    if not x.is_floating_point():
        raise DTypeError(f"{op} takes floating-point tensors, got {x.dtype}")


def _dtype_ok(x: Tensor, op: str) -> bool:
    if x.dtype not in _DTYPES or (x.dtype == torch.bfloat16 and x.device.type == "cpu" and interpreting()):
        warn_once(f"{op}-dtype-{x.dtype}", f"{op}: dtype {x.dtype} is not supported by the kernel")
        return False
    return True


def _transformed(op: str, *ts: Tensor | None) -> bool:
    """Whether forward-mode AD tracks one of ``ts`` or a functorch transform (jvp, vmap, grad)
    wraps it; logs once per op that the reference takes it."""
    hit = forward_ad(*ts)
    if hit:
        warn_once(f"{op}-forward-ad", f"{op}: forward-mode AD or a functorch transform (the kernel has no JVP rule)")
    return hit


def group_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float = 1e-5,
               scale: Tensor | None = None, shift: Tensor | None = None, silu: bool = False,
               split: int = 0) -> Tensor:
    """``act(GN(x)·(1 + scale) + shift)`` for ``x [N, C, *spatial]`` (see ``reference.group_norm_ref``).

    ``split`` forces the number of programs per group along the spatial axis (0: automatic).
    """
    if x.dim() < 2:
        raise ShapeError(f"group_norm needs x [N, C, *], got {tuple(x.shape)}")
    _floating("group_norm", x)
    n, c = x.shape[:2]
    if groups < 1:
        raise ShapeError(f"group_norm needs groups >= 1, got {groups}")
    if c % groups:
        raise ShapeError(f"{c} channels do not split into {groups} groups")
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None and t.shape != (n, c):
            raise ShapeError(f"{name} must be [{n}, {c}], got {tuple(t.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (c,):
            raise ShapeError(f"{name} must be [{c}], got {tuple(t.shape)}")
    use = (
        x.numel() > 0
        and kernel_device(x)
        and _dtype_ok(x, "group_norm")
        and not _transformed("group_norm", x, weight, bias, scale, shift)
    )
    if use and not flat_spatial(x):
        warn_once("group_norm-strides", f"group_norm: input strides {x.stride()} do not flatten over H·W")
        use = False
    if not use:
        return group_norm_ref(x, weight, bias, groups, eps, scale, shift, silu)

    contig = (lambda t: None if t is None else t.contiguous())  # noqa: E731
    return group_norm_fwd(x, contig(weight), contig(bias), contig(scale), contig(shift), groups, float(eps),
                          bool(silu), int(split))[0]


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """``softmax(q kᵀ · scale) v`` for ``q [B, H, Lq, D]``, ``k, v [B, H, Lk, D]``; scale 1/√D by default."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ShapeError("attention needs q, k, v as [B, H, L, D]")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ShapeError(f"attention shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ShapeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    _floating("attention", q)
    if q.shape[-1] < 1:
        raise ShapeError(f"attention needs a head dim >= 1, got q {tuple(q.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    use = (
        q.numel() > 0
        and k.shape[2] > 0
        and kernel_device(q)
        and _dtype_ok(q, "attention")
        and not _transformed("attention", q, k, v)
    )
    if use and q.shape[-1] > MAX_HEAD_DIM:
        warn_once(f"attention-head-dim-{q.shape[-1]}", f"attention: head dim {q.shape[-1]} > {MAX_HEAD_DIM}")
        use = False
    if not use:
        return attention_ref(q, k, v, scale)

    return attention_fwd(q, k, v, scale)[0]
