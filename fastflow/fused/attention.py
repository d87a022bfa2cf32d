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
to 256 as one or two power-of-two tiles (:func:`head_dim_parts`: 160 = 128 + 32, 80 = 64 + 16, so
the dot work is that of the real head dim, not of the next power of two); fp16, bf16, fp32 (TF32
tensor cores when PyTorch allows TF32 for fp32 matmuls, IEEE products otherwise). Block sizes are
autotuned once per (power-of-two length bucket, head-dim tiles, dtype) and cached, so a new
sequence length in the same bucket does not re-tune; configs that would spill registers or
overflow shared memory on the running GPU are pruned first (:mod:`fastflow.fused.tuning`,
checked per arch by ``fastflow bench codegen``).
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op

from fastflow.fused.runtime import Launch, interpreting, next_pow2, require_kernel_device
from fastflow.fused.tuning import attention_pruner

LOG2E = 1.4426950408889634


def _configs(bwd: bool = False) -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    sizes = [(128, 64, 8, 2), (64, 128, 8, 2), (64, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2),
             (32, 64, 8, 2), (16, 64, 4, 2)] if bwd \
        else [(128, 128, 8, 2), (128, 64, 8, 2), (128, 64, 4, 3), (64, 128, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in sizes]


_KEY = ["LQ_B", "LK_B", "BLOCK_D0", "BLOCK_D1", "DTYPE_KEY", "IEEE"]
_prune_fwd, _prune_dkdv, _prune_dq = (attention_pruner(k) for k in ("fwd", "dkdv", "dq"))


def _tf32_allowed() -> bool:
    """fp32 attention takes TF32 tensor cores when PyTorch allows TF32 for fp32 matmuls."""
    return torch.get_float32_matmul_precision() != "highest"


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """``a @ b`` with fp32 accumulation; ``IEEE``: fp32 operands in full precision (not TF32)."""
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


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune_fwd})
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, scale_log2, LQ, LK, HEADS, D,
                q_b, q_h, q_l, q_d, k_b, k_h, k_l, k_d, v_b, v_h, v_l, v_d, o_b, o_h, o_l, o_d,
                LQ_B, LK_B, DTYPE_KEY, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, IEEE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = offs_m < LQ
    d0 = tl.arange(0, BLOCK_D0)  # head-dim part 0: [0, BLOCK_D0)
    qbase = Q + _head(bh, HEADS, q_b, q_h)
    q0 = _tile(qbase, offs_m, d0, q_l, q_d, mmask, d0 < D)
    acc0 = tl.zeros((BLOCK_M, BLOCK_D0), tl.float32)
    if BLOCK_D1 > 0:  # part 1: [BLOCK_D0, BLOCK_D0 + BLOCK_D1), masked at D
        d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
        q1 = _tile(qbase, offs_m, d1, q_l, q_d, mmask, d1 < D)
        acc1 = tl.zeros((BLOCK_M, BLOCK_D1), tl.float32)
    kbase = K + _head(bh, HEADS, k_b, k_h)
    vbase = V + _head(bh, HEADS, v_b, v_h)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < LK
        qk = _dot(q0, tl.trans(_tile(kbase, offs_n, d0, k_l, k_d, nmask, d0 < D)), IEEE)
        if BLOCK_D1 > 0:
            qk += _dot(q1, tl.trans(_tile(kbase, offs_n, d1, k_l, k_d, nmask, d1 < D)), IEEE)
        s = tl.where(nmask[None, :], qk * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v0 = _tile(vbase, offs_n, d0, v_l, v_d, nmask, d0 < D)
        acc0 = acc0 * alpha[:, None] + _dot(p.to(v0.dtype), v0, IEEE)
        if BLOCK_D1 > 0:
            v1 = _tile(vbase, offs_n, d1, v_l, v_d, nmask, d1 < D)
            acc1 = acc1 * alpha[:, None] + _dot(p.to(v1.dtype), v1, IEEE)
        m_i = m_new
    obase = O + _head(bh, HEADS, o_b, o_h) + offs_m[:, None] * o_l
    tl.store(obase + d0[None, :] * o_d, (acc0 / l_i[:, None]).to(O.dtype.element_ty),
             mask=mmask[:, None] & (d0 < D)[None, :])
    if BLOCK_D1 > 0:
        tl.store(obase + d1[None, :] * o_d, (acc1 / l_i[:, None]).to(O.dtype.element_ty),
                 mask=mmask[:, None] & (d1 < D)[None, :])
    tl.store(LSE + bh.to(tl.int64) * LQ + offs_m, m_i + tl.math.log2(l_i), mask=mmask)


@triton.autotune(configs=_configs(bwd=True), key=_KEY, prune_configs_by={"early_config_prune": _prune_dkdv})
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, scale, scale_log2, LQ, LK, HEADS, D,
                     q_b, q_h, q_l, q_d, k_b, k_h, k_l, k_d, v_b, v_h, v_l, v_d, do_b, do_h, do_l, do_d,
                     dk_b, dk_h, dk_l, dk_d, dv_b, dv_h, dv_l, dv_d,
                     LQ_B, LK_B, DTYPE_KEY, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, IEEE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < LK
    d0 = tl.arange(0, BLOCK_D0)
    kbase = K + _head(bh, HEADS, k_b, k_h)
    vbase = V + _head(bh, HEADS, v_b, v_h)
    k0 = _tile(kbase, offs_n, d0, k_l, k_d, nmask, d0 < D)
    v0 = _tile(vbase, offs_n, d0, v_l, v_d, nmask, d0 < D)
    dk0 = tl.zeros((BLOCK_N, BLOCK_D0), tl.float32)
    dv0 = tl.zeros((BLOCK_N, BLOCK_D0), tl.float32)
    if BLOCK_D1 > 0:
        d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
        k1 = _tile(kbase, offs_n, d1, k_l, k_d, nmask, d1 < D)
        v1 = _tile(vbase, offs_n, d1, v_l, v_d, nmask, d1 < D)
        dk1 = tl.zeros((BLOCK_N, BLOCK_D1), tl.float32)
        dv1 = tl.zeros((BLOCK_N, BLOCK_D1), tl.float32)
    qbase = Q + _head(bh, HEADS, q_b, q_h)
    dobase = DO + _head(bh, HEADS, do_b, do_h)
    row = bh.to(tl.int64) * LQ
    for start in range(0, LQ, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mmask = offs_m < LQ
        q0 = _tile(qbase, offs_m, d0, q_l, q_d, mmask, d0 < D)
        do0 = _tile(dobase, offs_m, d0, do_l, do_d, mmask, d0 < D)
        kq = _dot(k0, tl.trans(q0), IEEE)
        vdo = _dot(v0, tl.trans(do0), IEEE)
        if BLOCK_D1 > 0:
            q1 = _tile(qbase, offs_m, d1, q_l, q_d, mmask, d1 < D)
            do1 = _tile(dobase, offs_m, d1, do_l, do_d, mmask, d1 < D)
            kq += _dot(k1, tl.trans(q1), IEEE)
            vdo += _dot(v1, tl.trans(do1), IEEE)
        lse = tl.load(LSE + row + offs_m, mask=mmask, other=0.0)
        delta = tl.load(DELTA + row + offs_m, mask=mmask, other=0.0)
        pt = tl.math.exp2(kq * scale_log2 - lse[None, :])  # Pᵀ
        pt = tl.where(nmask[:, None] & mmask[None, :], pt, 0.0)
        dst = (pt * (vdo - delta[None, :])).to(q0.dtype)
        dv0 += _dot(pt.to(do0.dtype), do0, IEEE)
        dk0 += _dot(dst, q0, IEEE)
        if BLOCK_D1 > 0:
            dv1 += _dot(pt.to(do1.dtype), do1, IEEE)
            dk1 += _dot(dst, q1, IEEE)
    dkbase = DK + _head(bh, HEADS, dk_b, dk_h) + offs_n[:, None] * dk_l
    dvbase = DV + _head(bh, HEADS, dv_b, dv_h) + offs_n[:, None] * dv_l
    tl.store(dkbase + d0[None, :] * dk_d, (dk0 * scale).to(DK.dtype.element_ty), mask=nmask[:, None] & (d0 < D)[None, :])
    tl.store(dvbase + d0[None, :] * dv_d, dv0.to(DV.dtype.element_ty), mask=nmask[:, None] & (d0 < D)[None, :])
    if BLOCK_D1 > 0:
        tl.store(dkbase + d1[None, :] * dk_d, (dk1 * scale).to(DK.dtype.element_ty),
                 mask=nmask[:, None] & (d1 < D)[None, :])
        tl.store(dvbase + d1[None, :] * dv_d, dv1.to(DV.dtype.element_ty), mask=nmask[:, None] & (d1 < D)[None, :])


@triton.autotune(configs=_configs(bwd=True), key=_KEY, prune_configs_by={"early_config_prune": _prune_dq})
@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, O, LSE, DELTA, DQ, scale, scale_log2, LQ, LK, HEADS, D,
                   q_b, q_h, q_l, q_d, k_b, k_h, k_l, k_d, v_b, v_h, v_l, v_d, do_b, do_h, do_l, do_d,
                   o_b, o_h, o_l, o_d, dq_b, dq_h, dq_l, dq_d, LQ_B, LK_B, DTYPE_KEY, BLOCK_D0: tl.constexpr,
                   BLOCK_D1: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of a block of queries; also δ = rowsum(dO ∘ O) in fp32, stored for the dK/dV kernel."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = offs_m < LQ
    d0 = tl.arange(0, BLOCK_D0)
    qbase = Q + _head(bh, HEADS, q_b, q_h)
    dobase = DO + _head(bh, HEADS, do_b, do_h)
    obase = O + _head(bh, HEADS, o_b, o_h)
    q0 = _tile(qbase, offs_m, d0, q_l, q_d, mmask, d0 < D)
    do0 = _tile(dobase, offs_m, d0, do_l, do_d, mmask, d0 < D)
    delta = tl.sum(do0.to(tl.float32) * _tile(obase, offs_m, d0, o_l, o_d, mmask, d0 < D).to(tl.float32), 1)
    dq0 = tl.zeros((BLOCK_M, BLOCK_D0), tl.float32)
    if BLOCK_D1 > 0:
        d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
        q1 = _tile(qbase, offs_m, d1, q_l, q_d, mmask, d1 < D)
        do1 = _tile(dobase, offs_m, d1, do_l, do_d, mmask, d1 < D)
        delta += tl.sum(do1.to(tl.float32) * _tile(obase, offs_m, d1, o_l, o_d, mmask, d1 < D).to(tl.float32), 1)
        dq1 = tl.zeros((BLOCK_M, BLOCK_D1), tl.float32)
    row = bh.to(tl.int64) * LQ
    tl.store(DELTA + row + offs_m, delta, mask=mmask)
    lse = tl.load(LSE + row + offs_m, mask=mmask, other=0.0)
    kbase = K + _head(bh, HEADS, k_b, k_h)
    vbase = V + _head(bh, HEADS, v_b, v_h)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < LK
        k0 = _tile(kbase, offs_n, d0, k_l, k_d, nmask, d0 < D)
        qk = _dot(q0, tl.trans(k0), IEEE)
        dov = _dot(do0, tl.trans(_tile(vbase, offs_n, d0, v_l, v_d, nmask, d0 < D)), IEEE)
        if BLOCK_D1 > 0:
            k1 = _tile(kbase, offs_n, d1, k_l, k_d, nmask, d1 < D)
            qk += _dot(q1, tl.trans(k1), IEEE)
            dov += _dot(do1, tl.trans(_tile(vbase, offs_n, d1, v_l, v_d, nmask, d1 < D)), IEEE)
        p = tl.math.exp2(qk * scale_log2 - lse[:, None])
        p = tl.where(mmask[:, None] & nmask[None, :], p, 0.0)
        ds = (p * (dov - delta[:, None])).to(k0.dtype)
        dq0 += _dot(ds, k0, IEEE)
        if BLOCK_D1 > 0:
            dq1 += _dot(ds, k1, IEEE)
    dqbase = DQ + _head(bh, HEADS, dq_b, dq_h) + offs_m[:, None] * dq_l
    tl.store(dqbase + d0[None, :] * dq_d, (dq0 * scale).to(DQ.dtype.element_ty), mask=mmask[:, None] & (d0 < D)[None, :])
    if BLOCK_D1 > 0:
        tl.store(dqbase + d1[None, :] * dq_d, (dq1 * scale).to(DQ.dtype.element_ty),
                 mask=mmask[:, None] & (d1 < D)[None, :])


def head_dim_parts(d: int) -> tuple[int, int]:
    """Power-of-two tiles ``(BLOCK_D0, BLOCK_D1)`` covering head dim ``d`` with the least padding
    (``tl.dot`` takes tiles of at least 16; ``BLOCK_D1 = 0``: one tile): 160 → (128, 32),
    80 → (64, 16), 40 → (32, 16), 64 → (64, 0); a split that saves nothing is not taken."""
    whole = max(16, next_pow2(d))
    d0 = max(16, 1 << (int(d).bit_length() - 1))
    if d0 >= d:
        return whole, 0
    d1 = max(16, next_pow2(d - d0))
    return (d0, d1) if d0 + d1 < whole else (whole, 0)


def _meta(q: Tensor, k: Tensor) -> dict[str, object]:
    d0, d1 = head_dim_parts(q.shape[3])
    return {"LQ_B": next_pow2(q.shape[2]), "LK_B": next_pow2(k.shape[2]),
            "DTYPE_KEY": {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}[q.dtype],
            "BLOCK_D0": d0, "BLOCK_D1": d1, "IEEE": q.dtype == torch.float32 and not _tf32_allowed()}


def fwd_launch(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, scale: float) -> Launch:
    b, h, lq, d = q.shape
    return Launch(_fwd_kernel, lambda m: (triton.cdiv(lq, m["BLOCK_M"]), b * h),
                  (q, k, v, o, lse, scale * LOG2E, lq, k.shape[2], h, d, *q.stride(), *k.stride(), *v.stride(),
                   *o.stride()), _meta(q, k))


def bwd_launches(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, delta: Tensor, dq: Tensor,
                 dk: Tensor, dv: Tensor, scale: float) -> list[Launch]:
    """dQ first (it also writes δ), then dK/dV."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    common = (scale, scale * LOG2E, lq, lk, h, d, *q.stride(), *k.stride(), *v.stride(), *do.stride())
    return [Launch(_bwd_dq_kernel, lambda m: (triton.cdiv(lq, m["BLOCK_M"]), b * h),
                   (q, k, v, do, o, lse, delta, dq, *common, *o.stride(), *dq.stride()), _meta(q, k)),
            Launch(_bwd_dkdv_kernel, lambda m: (triton.cdiv(lk, m["BLOCK_N"]), b * h),
                   (q, k, v, do, lse, delta, dk, dv, *common, *dk.stride(), *dv.stride()), _meta(q, k))]


@triton_op("fastflow::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``(O [B, H, Lq, D], lse [B, H, Lq] in base 2)``. Kernel only: ``fastflow.fused.attention``
    routes CPU tensors to the reference."""
    require_kernel_device(q, "attention_fwd")
    o = torch.empty_like(q)
    lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    fwd_launch(q, k, v, o, lse, scale)()
    return o, lse


@attention_fwd.register_fake
def _(q, k, v, scale):  # noqa: ANN001, ANN202
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@triton_op("fastflow::attention_bwd", mutates_args=())
def attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                  scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)``; the dQ kernel runs first and also writes δ = rowsum(dO ∘ O) for the dK/dV kernel."""
    require_kernel_device(q, "attention_bwd")
    delta = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    for launch in bwd_launches(do, q, k, v, o, lse, delta, dq, dk, dv, scale):
        launch()
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
