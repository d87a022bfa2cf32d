r"""Triton attention (FlashAttention-2 style), forward and backward, registered as
``torch.ops.fastflow.attention_fwd`` / ``attention_bwd`` with fake and autograd rules.

Forward: per block of queries, an online softmax over key blocks in base 2,
:math:`m \leftarrow \max(m, \max_j s_j)`, :math:`\ell \leftarrow \ell\,2^{m_\text{old}-m} + \sum_j 2^{s_j - m}`
with :math:`s = q k^\top \cdot \text{scale}\cdot\log_2 e`; it stores ``O`` and the row
log-sum-exp (base 2) for the backward. Backward: :math:`\delta_i = \sum_d dO_{id} O_{id}`,
:math:`P = 2^{s - \mathrm{lse}}`, :math:`dV = P^\top dO`, :math:`dS = P \circ (dO V^\top - \delta)`,
:math:`dK = \text{scale}\, dS^\top Q`, :math:`dQ = \text{scale}\, dS K` — one kernel over key blocks
(dK, dV) and one over query blocks (dQ), no atomics.

Inputs are ``[B, H, L, D]`` read through their strides (a ``[B, L, H, D]`` tensor transposed is
taken without a copy); Lq ≠ Lk (cross-attention) and any lengths (boundary masks); head dims up
to 256 padded to the next power of two under a mask; fp16, bf16, fp32 (fp32 products in IEEE
precision). Block sizes are autotuned once per (power-of-two length bucket, head-dim block,
dtype) and cached, so a new sequence length in the same bucket does not re-tune.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from fastflow.fused.runtime import interpreting, next_pow2, require_kernel_device

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256


def _configs(bwd: bool = False) -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    sizes = [(64, 64, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2), (128, 64, 8, 2)] if bwd else \
        [(128, 64, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 2), (128, 128, 8, 2), (64, 128, 4, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in sizes]


_KEY = ["LQ_B", "LK_B", "BLOCK_D", "DTYPE_KEY"]


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """``a @ b`` with fp32 accumulation; fp32 operands in IEEE precision (not tf32)."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _tile(ptr, offs_l, offs_d, s_l, s_d, lmask, dmask):
    """Rows ``offs_l`` × head-dim ``offs_d`` of one (batch, head), zero outside the masks."""
    return tl.load(ptr + offs_l[:, None] * s_l + offs_d[None, :] * s_d, mask=lmask[:, None] & dmask[None, :],
                   other=0.0)


@triton.jit
def _head(bh, HEADS, s_b, s_h):
    """Offset of batch·head ``bh`` in a ``[B, H, L, D]`` tensor with strides ``s_b``, ``s_h``."""
    return (bh // HEADS).to(tl.int64) * s_b + (bh % HEADS).to(tl.int64) * s_h


@triton.autotune(configs=_configs(), key=_KEY)
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, scale_log2, LQ, LK, HEADS, D,
                q_b, q_h, q_l, q_d, k_b, k_h, k_l, k_d, v_b, v_h, v_l, v_d, o_b, o_h, o_l, o_d,
                LQ_B, LK_B, DTYPE_KEY, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    mmask = offs_m < LQ
    q = _tile(Q + _head(bh, HEADS, q_b, q_h), offs_m, offs_d, q_l, q_d, mmask, dmask)
    kbase = K + _head(bh, HEADS, k_b, k_h)
    vbase = V + _head(bh, HEADS, v_b, v_h)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < LK
        k = _tile(kbase, offs_n, offs_d, k_l, k_d, nmask, dmask)
        s = tl.where(nmask[None, :], _dot(q, tl.trans(k), IEEE) * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _tile(vbase, offs_n, offs_d, v_l, v_d, nmask, dmask)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O + _head(bh, HEADS, o_b, o_h) + offs_m[:, None] * o_l + offs_d[None, :] * o_d,
             acc.to(O.dtype.element_ty), mask=mmask[:, None] & dmask[None, :])
    tl.store(LSE + bh.to(tl.int64) * LQ + offs_m, m_i + tl.math.log2(l_i), mask=mmask)


@triton.autotune(configs=_configs(bwd=True), key=_KEY)
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, scale, scale_log2, LQ, LK, HEADS, D,
                     q_b, q_h, q_l, q_d, k_b, k_h, k_l, k_d, v_b, v_h, v_l, v_d, do_b, do_h, do_l, do_d,
                     dk_b, dk_h, dk_l, dk_d, dv_b, dv_h, dv_l, dv_d,
                     LQ_B, LK_B, DTYPE_KEY, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    nmask = offs_n < LK
    k = _tile(K + _head(bh, HEADS, k_b, k_h), offs_n, offs_d, k_l, k_d, nmask, dmask)
    v = _tile(V + _head(bh, HEADS, v_b, v_h), offs_n, offs_d, v_l, v_d, nmask, dmask)
    qbase = Q + _head(bh, HEADS, q_b, q_h)
    dobase = DO + _head(bh, HEADS, do_b, do_h)
    row = bh.to(tl.int64) * LQ
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for start in range(0, LQ, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mmask = offs_m < LQ
        q = _tile(qbase, offs_m, offs_d, q_l, q_d, mmask, dmask)
        do = _tile(dobase, offs_m, offs_d, do_l, do_d, mmask, dmask)
        lse = tl.load(LSE + row + offs_m, mask=mmask, other=0.0)
        delta = tl.load(DELTA + row + offs_m, mask=mmask, other=0.0)
        pt = tl.math.exp2(_dot(k, tl.trans(q), IEEE) * scale_log2 - lse[None, :])  # Pᵀ
        pt = tl.where(nmask[:, None] & mmask[None, :], pt, 0.0)
        dv += _dot(pt.to(do.dtype), do, IEEE)
        dst = pt * (_dot(v, tl.trans(do), IEEE) - delta[None, :])
        dk += _dot(dst.to(q.dtype), q, IEEE)
    kv_mask = nmask[:, None] & dmask[None, :]
    tl.store(DK + _head(bh, HEADS, dk_b, dk_h) + offs_n[:, None] * dk_l + offs_d[None, :] * dk_d,
             (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + _head(bh, HEADS, dv_b, dv_h) + offs_n[:, None] * dv_l + offs_d[None, :] * dv_d,
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.autotune(configs=_configs(bwd=True), key=_KEY)
@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, O, LSE, DELTA, DQ, scale, scale_log2, LQ, LK, HEADS, D,
                   q_b, q_h, q_l, q_d, k_b, k_h, k_l, k_d, v_b, v_h, v_l, v_d, do_b, do_h, do_l, do_d,
                   o_b, o_h, o_l, o_d, dq_b, dq_h, dq_l, dq_d, LQ_B, LK_B, DTYPE_KEY, BLOCK_D: tl.constexpr,
                   IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of a block of queries; also δ = rowsum(dO ∘ O) in fp32, stored for the dK/dV kernel."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    mmask = offs_m < LQ
    q = _tile(Q + _head(bh, HEADS, q_b, q_h), offs_m, offs_d, q_l, q_d, mmask, dmask)
    do = _tile(DO + _head(bh, HEADS, do_b, do_h), offs_m, offs_d, do_l, do_d, mmask, dmask)
    o = _tile(O + _head(bh, HEADS, o_b, o_h), offs_m, offs_d, o_l, o_d, mmask, dmask)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    row = bh.to(tl.int64) * LQ
    tl.store(DELTA + row + offs_m, delta, mask=mmask)
    lse = tl.load(LSE + row + offs_m, mask=mmask, other=0.0)
    kbase = K + _head(bh, HEADS, k_b, k_h)
    vbase = V + _head(bh, HEADS, v_b, v_h)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < LK
        k = _tile(kbase, offs_n, offs_d, k_l, k_d, nmask, dmask)
        v = _tile(vbase, offs_n, offs_d, v_l, v_d, nmask, dmask)
        p = tl.math.exp2(_dot(q, tl.trans(k), IEEE) * scale_log2 - lse[:, None])
        p = tl.where(mmask[:, None] & nmask[None, :], p, 0.0)
        ds = p * (_dot(do, tl.trans(v), IEEE) - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE)
    tl.store(DQ + _head(bh, HEADS, dq_b, dq_h) + offs_m[:, None] * dq_l + offs_d[None, :] * dq_d,
             (dq * scale).to(DQ.dtype.element_ty), mask=mmask[:, None] & dmask[None, :])


def _meta(q: Tensor, k: Tensor) -> dict[str, object]:
    return {"LQ_B": next_pow2(q.shape[2]), "LK_B": next_pow2(k.shape[2]),
            "DTYPE_KEY": {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}[q.dtype],
            "BLOCK_D": max(16, next_pow2(q.shape[3])), "IEEE": q.dtype == torch.float32}


@triton_op("fastflow::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``(O [B, H, Lq, D], lse [B, H, Lq] in base 2)``. Kernel only: ``fastflow.fused.attention``
    routes CPU tensors to the reference."""
    require_kernel_device(q, "attention_fwd")
    b, h, lq, d = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(b, h, lq, device=q.device, dtype=torch.float32)

    def grid(meta):  # noqa: ANN001, ANN202
        return (triton.cdiv(lq, meta["BLOCK_M"]), b * h)

    wrap_triton(_fwd_kernel)[grid](q, k, v, o, lse, scale * LOG2E, lq, k.shape[2], h, d, *q.stride(), *k.stride(),
                                   *v.stride(), *o.stride(), **_meta(q, k))
    return o, lse


@attention_fwd.register_fake
def _(q, k, v, scale):  # noqa: ANN001, ANN202
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@triton_op("fastflow::attention_bwd", mutates_args=())
def attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                  scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)``; the dQ kernel runs first and also writes δ = rowsum(dO ∘ O) for the dK/dV kernel."""
    require_kernel_device(q, "attention_bwd")
    b, h, lq, d = q.shape
    lk = k.shape[2]
    delta = torch.empty(b, h, lq, device=q.device, dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    meta = _meta(q, k)
    common = (scale, scale * LOG2E, lq, lk, h, d, *q.stride(), *k.stride(), *v.stride(), *do.stride())

    def grid_kv(m):  # noqa: ANN001, ANN202
        return (triton.cdiv(lk, m["BLOCK_N"]), b * h)

    def grid_q(m):  # noqa: ANN001, ANN202
        return (triton.cdiv(lq, m["BLOCK_M"]), b * h)

    wrap_triton(_bwd_dq_kernel)[grid_q](q, k, v, do, o, lse, delta, dq, *common, *o.stride(), *dq.stride(), **meta)
    wrap_triton(_bwd_dkdv_kernel)[grid_kv](q, k, v, do, lse, delta, dk, dv, *common, *dk.stride(), *dv.stride(),
                                           **meta)
    return dq, dk, dv


@attention_bwd.register_fake
def _(do, q, k, v, o, lse, scale):  # noqa: ANN001, ANN202
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output) -> None:  # noqa: ANN001
    q, k, v, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.scale = scale


def _backward(ctx, do, _dlse):  # noqa: ANN001, ANN202
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = attention_bwd(do, q, k, v, o, lse, ctx.scale)
    return dq, dk, dv, None


attention_fwd.register_autograd(_backward, setup_context=_setup)
