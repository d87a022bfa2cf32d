r"""Plain-PyTorch references of the ops :mod:`fastflow.fused` replaces with Triton kernels: what the
models compute with, used on CPU, under export, as the kernels' fallback for inputs they do not
take, and as the test oracle. One reference per op; it lives here, below both the models and
``fused``, so that no model imports the kernels.

GroupNorm with time modulation and activation, statistics over each group of ``C/G`` channels
and all spatial positions:

.. math:: y = \mathrm{act}\Big(\big(\tfrac{x - \mu_{n,g}}{\sqrt{\sigma^2_{n,g} + \epsilon}}\,\gamma_c + \beta_c\big)
          (1 + s_{n,c}) + b_{n,c}\Big)

Attention: :math:`O = \mathrm{softmax}(Q K^\top \cdot \text{scale})\,V` per batch and head.
Both compute in fp32 (fp64 for fp64 inputs) and return the input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor
from torch._C._functorch import is_functorch_wrapped_tensor


def forward_ad(*ts: Tensor | None) -> bool:
    """Whether forward-mode AD (``torch.autograd.forward_ad``) tracks one of ``ts`` or a functorch
    transform (``torch.func.jvp``, ``vmap``, ``grad``) wraps it. False while ``torch.compile``
    traces (it sees fake tensors; a compiled JVP is its own transform)."""
    if torch.compiler.is_compiling():
        return False
    return any(t is not None and (is_functorch_wrapped_tensor(t) or fwAD.unpack_dual(t).tangent is not None)
               for t in ts)


def attention_math(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``softmax(q kᵀ · scale) v`` written out (differentiable in both modes, any dtype)."""
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def group_norm_ref(x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float = 1e-5,
                   scale: Tensor | None = None, shift: Tensor | None = None, silu: bool = False) -> Tensor:
    """``act(GN(x)·(1 + scale) + shift)`` for ``x [N, C, *]``, ``scale``/``shift`` ``[N, C]``."""
    ct = _compute_dtype(x)
    cast = (lambda t: None if t is None else t.to(ct))  # noqa: E731
    y = F.group_norm(x.to(ct), groups, cast(weight), cast(bias), eps)
    view = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    if scale is not None:
        y = y * (1 + scale.to(ct).reshape(view))
    if shift is not None:
        y = y + shift.to(ct).reshape(view)
    return (F.silu(y) if silu else y).to(x.dtype)


def attention_ref(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """``softmax(q kᵀ · scale) v`` for ``q [B, H, Lq, D]``, ``k, v [B, H, Lk, D]``."""
    ct = _compute_dtype(q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if ct == torch.float64 or forward_ad(q, k, v):  # SDPA's fused CPU kernels have no forward-mode rule
        return attention_math(q.to(ct), k.to(ct), v.to(ct), scale).to(q.dtype)
    return F.scaled_dot_product_attention(q.to(ct), k.to(ct), v.to(ct), scale=scale).to(q.dtype)
