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

from fastflow.fused.runtime import Launch, next_pow2, require_kernel_device
from fastflow.fused.tuning import attention_configs, attention_pruner

LOG2E = 1.4426950408889634


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
def _head(bh, HEADS, s_b, s_h):
    """Offset of batch·head ``bh`` in a ``[B, H, L, D]`` tensor with strides ``s_b``, ``s_h``."""
    return (bh // HEADS).to(tl.int64) * s_b + (bh % HEADS).to(tl.int64) * s_h


@triton.jit
def _tile(ptr, offs_l, offs_d, s_l, s_d, lmask, dmask):
    """Rows ``offs_l`` × head-dim ``offs_d`` of one (batch, head), zero outside the masks."""
    return tl.load(ptr + offs_l[:, None] * s_l + offs_d[None, :] * s_d, mask=lmask[:, None] & dmask[None, :],
                   other=0.0)


# A head dim is read as two power-of-two parts, offsets d0 = [0, D0) and d1 = [D0, D0 + D1), masked at D
# (head_dim_parts). With BLOCK_D1 = 0 there is one part: d1 is d0 and the helpers hand back part-0
# values as the unused part 1. Each kernel makes d0; the helper that loads its first tiles makes d1. The
# helpers keep the hand-written kernels' order of loads and dots part by part (the ``fastflow bench codegen``
# rows, registers included, depend on it).
@triton.jit
def _block(BLOCK: tl.constexpr, L):
    """This program's rows ``i·BLOCK + [0, BLOCK)`` of a length-``L`` axis (``i``: program axis 0),
    their mask, and its batch·head (program axis 1)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < L, tl.program_id(1)


@triton.jit
def _part1(BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr):
    return BLOCK_D0 + tl.arange(0, BLOCK_D1)


@triton.jit
def _load2(ptr, offs_l, s_l, s_d, lmask, D, d0, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr):
    """Both head-dim parts of rows ``offs_l``, and the part-1 offsets ``d1``."""
    t0 = _tile(ptr, offs_l, d0, s_l, s_d, lmask, d0 < D)
    t1, d1 = t0, d0
    if BLOCK_D1 > 0:
        d1 = _part1(BLOCK_D0, BLOCK_D1)
        t1 = _tile(ptr, offs_l, d1, s_l, s_d, lmask, d1 < D)
    return t0, t1, d1


@triton.jit
def _load_pair2(pa, sa_l, sa_d, pb, sb_l, sb_d, offs_l, lmask, D, d0, BLOCK_D0: tl.constexpr,
                BLOCK_D1: tl.constexpr):
    """Rows ``offs_l`` of two tensors, part by part (A's part 0, B's part 0, A's part 1, B's part 1),
    and the part-1 offsets ``d1``."""
    a0 = _tile(pa, offs_l, d0, sa_l, sa_d, lmask, d0 < D)
    b0 = _tile(pb, offs_l, d0, sb_l, sb_d, lmask, d0 < D)
    a1, b1, d1 = a0, b0, d0
    if BLOCK_D1 > 0:
        d1 = _part1(BLOCK_D0, BLOCK_D1)
        a1 = _tile(pa, offs_l, d1, sa_l, sa_d, lmask, d1 < D)
        b1 = _tile(pb, offs_l, d1, sb_l, sb_d, lmask, d1 < D)
    return a0, a1, b0, b1, d1


@triton.jit
def _dq_prologue(qbase, q_l, q_d, dobase, do_l, do_d, obase, o_l, o_d, offs_m, mmask, D, d0, BLOCK_D0: tl.constexpr,
                 BLOCK_D1: tl.constexpr):
    """The dQ kernel's query rows: Q and dO tiles, δ = rowsum(dO ∘ O) in fp32, and ``d1``."""
    q0 = _tile(qbase, offs_m, d0, q_l, q_d, mmask, d0 < D)
    do0 = _tile(dobase, offs_m, d0, do_l, do_d, mmask, d0 < D)
    delta = _rowdot(do0, obase, offs_m, o_l, o_d, mmask, D, d0)
    q1, do1, d1 = q0, do0, d0
    if BLOCK_D1 > 0:
        d1 = _part1(BLOCK_D0, BLOCK_D1)
        q1 = _tile(qbase, offs_m, d1, q_l, q_d, mmask, d1 < D)
        do1 = _tile(dobase, offs_m, d1, do_l, do_d, mmask, d1 < D)
        delta += _rowdot(do1, obase, offs_m, o_l, o_d, mmask, D, d1)
    return q0, q1, do0, do1, delta, d1


@triton.jit
def _zeros2(ROWS: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr):
    """fp32 accumulators of both parts."""
    z0 = tl.zeros((ROWS, BLOCK_D0), tl.float32)
    z1 = z0
    if BLOCK_D1 > 0:
        z1 = tl.zeros((ROWS, BLOCK_D1), tl.float32)
    return z0, z1


@triton.jit
def _scores(a0, a1, ptr, offs_l, s_l, s_d, lmask, D, d0, d1, BLOCK_D1: tl.constexpr, IEEE: tl.constexpr):
    """``a @ Tᵀ`` for the rows ``offs_l`` of ``T`` at ``ptr``, over the head dim: per part, the tile's
    load, then its product."""
    acc = _dot(a0, tl.trans(_tile(ptr, offs_l, d0, s_l, s_d, lmask, d0 < D)), IEEE)
    if BLOCK_D1 > 0:
        acc += _dot(a1, tl.trans(_tile(ptr, offs_l, d1, s_l, s_d, lmask, d1 < D)), IEEE)
    return acc


@triton.jit
def _scores2(a0, a1, b0, b1, pa, sa_l, sa_d, pb, sb_l, sb_d, offs_l, lmask, D, d0, d1, BLOCK_D1: tl.constexpr,
             IEEE: tl.constexpr, INTERLEAVE: tl.constexpr):
    """``a @ Aᵀ`` and ``b @ Bᵀ`` for the same rows ``offs_l`` of two tensors ``A`` at ``pa``, ``B`` at
    ``pb``, part by part: A's tile, its product, B's tile, its product (``INTERLEAVE``, the dQ
    kernel's order) or both tiles, then both products (the dK/dV kernel's). Returns the two
    scores and the tiles."""
    ta0 = _tile(pa, offs_l, d0, sa_l, sa_d, lmask, d0 < D)
    if INTERLEAVE:
        sa = _dot(a0, tl.trans(ta0), IEEE)
    tb0 = _tile(pb, offs_l, d0, sb_l, sb_d, lmask, d0 < D)
    if not INTERLEAVE:
        sa = _dot(a0, tl.trans(ta0), IEEE)
    sb = _dot(b0, tl.trans(tb0), IEEE)
    ta1, tb1 = ta0, tb0
    if BLOCK_D1 > 0:
        ta1 = _tile(pa, offs_l, d1, sa_l, sa_d, lmask, d1 < D)
        if INTERLEAVE:
            sa += _dot(a1, tl.trans(ta1), IEEE)
        tb1 = _tile(pb, offs_l, d1, sb_l, sb_d, lmask, d1 < D)
        if not INTERLEAVE:
            sa += _dot(a1, tl.trans(ta1), IEEE)
        sb += _dot(b1, tl.trans(tb1), IEEE)
    return sa, sb, ta0, ta1, tb0, tb1


@triton.jit
def _rescale_pv(acc, alpha, p, ptr, offs_l, s_l, s_d, lmask, D, d, IEEE: tl.constexpr):
    """The forward's ``acc·α + P V`` for the head-dim part ``d`` of ``V``'s rows ``offs_l``."""
    v = _tile(ptr, offs_l, d, s_l, s_d, lmask, d < D)
    return acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)


@triton.jit
def _rowdot(x, ptr, offs_l, s_l, s_d, lmask, D, d):
    """``rowsum(x ∘ T)`` in fp32 over the head-dim part ``d`` of ``T``'s rows ``offs_l``."""
    return tl.sum(x.to(tl.float32) * _tile(ptr, offs_l, d, s_l, s_d, lmask, d < D).to(tl.float32), 1)


@triton.jit
def _store(ptr, s_d, lmask, D, d, x):
    """Store the fp32 tile ``x`` (head-dim part ``d``) in ``ptr``'s dtype; ``ptr`` points at the rows."""
    tl.store(ptr + d[None, :] * s_d, x.to(ptr.dtype.element_ty), mask=lmask[:, None] & (d < D)[None, :])


@triton.jit
def _store_scaled(pk, pv, sk_d, sv_d, lmask, D, d, dk, dv, scale):
    """The dK/dV kernel's stores of one head-dim part: ``dK·scale`` and ``dV``."""
    tl.store(pk + d[None, :] * sk_d, (dk * scale).to(pk.dtype.element_ty), mask=lmask[:, None] & (d < D)[None, :])
    tl.store(pv + d[None, :] * sv_d, dv.to(pv.dtype.element_ty), mask=lmask[:, None] & (d < D)[None, :])


@triton.autotune(configs=attention_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune_fwd})
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, scale_log2, LQ, LK, HEADS, D,
                q_b, q_h, q_l, q_d, k_b, k_h, k_l, k_d, v_b, v_h, v_l, v_d, o_b, o_h, o_l, o_d,
                LQ_B, LK_B, DTYPE_KEY, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, IEEE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_m, mmask, bh = _block(BLOCK_M, LQ)
    d0 = tl.arange(0, BLOCK_D0)
    q0, q1, d1 = _load2(Q + _head(bh, HEADS, q_b, q_h), offs_m, q_l, q_d, mmask, D, d0, BLOCK_D0, BLOCK_D1)
    acc0, acc1 = _zeros2(BLOCK_M, BLOCK_D0, BLOCK_D1)
    kbase = K + _head(bh, HEADS, k_b, k_h)
    vbase = V + _head(bh, HEADS, v_b, v_h)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < LK
        qk = _scores(q0, q1, kbase, offs_n, k_l, k_d, nmask, D, d0, d1, BLOCK_D1, IEEE)
        s = tl.where(nmask[None, :], qk * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc0 = _rescale_pv(acc0, alpha, p, vbase, offs_n, v_l, v_d, nmask, D, d0, IEEE)
        if BLOCK_D1 > 0:
            acc1 = _rescale_pv(acc1, alpha, p, vbase, offs_n, v_l, v_d, nmask, D, d1, IEEE)
        m_i = m_new
    obase = O + _head(bh, HEADS, o_b, o_h) + offs_m[:, None] * o_l
    _store(obase, o_d, mmask, D, d0, acc0 / l_i[:, None])
    if BLOCK_D1 > 0:
        _store(obase, o_d, mmask, D, d1, acc1 / l_i[:, None])
    tl.store(LSE + bh.to(tl.int64) * LQ + offs_m, m_i + tl.math.log2(l_i), mask=mmask)


@triton.autotune(configs=attention_configs(bwd=True), key=_KEY, prune_configs_by={"early_config_prune": _prune_dkdv})
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, scale, scale_log2, LQ, LK, HEADS, D,
                     q_b, q_h, q_l, q_d, k_b, k_h, k_l, k_d, v_b, v_h, v_l, v_d, do_b, do_h, do_l, do_d,
                     dk_b, dk_h, dk_l, dk_d, dv_b, dv_h, dv_l, dv_d,
                     LQ_B, LK_B, DTYPE_KEY, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr, IEEE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n, nmask, bh = _block(BLOCK_N, LK)
    d0 = tl.arange(0, BLOCK_D0)
    k0, k1, v0, v1, d1 = _load_pair2(K + _head(bh, HEADS, k_b, k_h), k_l, k_d, V + _head(bh, HEADS, v_b, v_h), v_l,
                                     v_d, offs_n, nmask, D, d0, BLOCK_D0, BLOCK_D1)
    dk0, dk1 = _zeros2(BLOCK_N, BLOCK_D0, BLOCK_D1)
    dv0, dv1 = _zeros2(BLOCK_N, BLOCK_D0, BLOCK_D1)
    qbase = Q + _head(bh, HEADS, q_b, q_h)
    dobase = DO + _head(bh, HEADS, do_b, do_h)
    row = bh.to(tl.int64) * LQ
    for start in range(0, LQ, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mmask = offs_m < LQ
        kq, vdo, q0, q1, do0, do1 = _scores2(k0, k1, v0, v1, qbase, q_l, q_d, dobase, do_l, do_d, offs_m, mmask, D,
                                             d0, d1, BLOCK_D1, IEEE, False)
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
    _store_scaled(dkbase, dvbase, dk_d, dv_d, nmask, D, d0, dk0, dv0, scale)
    if BLOCK_D1 > 0:
        _store_scaled(dkbase, dvbase, dk_d, dv_d, nmask, D, d1, dk1, dv1, scale)


@triton.autotune(configs=attention_configs(bwd=True), key=_KEY, prune_configs_by={"early_config_prune": _prune_dq})
@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, O, LSE, DELTA, DQ, scale, scale_log2, LQ, LK, HEADS, D,
                   q_b, q_h, q_l, q_d, k_b, k_h, k_l, k_d, v_b, v_h, v_l, v_d, do_b, do_h, do_l, do_d,
                   o_b, o_h, o_l, o_d, dq_b, dq_h, dq_l, dq_d, LQ_B, LK_B, DTYPE_KEY, BLOCK_D0: tl.constexpr,
                   BLOCK_D1: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of a block of queries; also δ = rowsum(dO ∘ O) in fp32, stored for the dK/dV kernel."""
    offs_m, mmask, bh = _block(BLOCK_M, LQ)
    d0 = tl.arange(0, BLOCK_D0)
    q0, q1, do0, do1, delta, d1 = _dq_prologue(
        Q + _head(bh, HEADS, q_b, q_h), q_l, q_d, DO + _head(bh, HEADS, do_b, do_h), do_l, do_d,
        O + _head(bh, HEADS, o_b, o_h), o_l, o_d, offs_m, mmask, D, d0, BLOCK_D0, BLOCK_D1)
    dq0, dq1 = _zeros2(BLOCK_M, BLOCK_D0, BLOCK_D1)
    row = bh.to(tl.int64) * LQ
    tl.store(DELTA + row + offs_m, delta, mask=mmask)
    lse = tl.load(LSE + row + offs_m, mask=mmask, other=0.0)
    kbase = K + _head(bh, HEADS, k_b, k_h)
    vbase = V + _head(bh, HEADS, v_b, v_h)
    for start in range(0, LK, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < LK
        qk, dov, k0, k1, _, _ = _scores2(q0, q1, do0, do1, kbase, k_l, k_d, vbase, v_l, v_d, offs_n, nmask, D,
                                         d0, d1, BLOCK_D1, IEEE, True)
        p = tl.math.exp2(qk * scale_log2 - lse[:, None])
        p = tl.where(mmask[:, None] & nmask[None, :], p, 0.0)
        ds = (p * (dov - delta[:, None])).to(k0.dtype)
        dq0 += _dot(ds, k0, IEEE)
        if BLOCK_D1 > 0:
            dq1 += _dot(ds, k1, IEEE)
    dqbase = DQ + _head(bh, HEADS, dq_b, dq_h) + offs_m[:, None] * dq_l
    _store(dqbase, dq_d, mmask, D, d0, dq0 * scale)
    if BLOCK_D1 > 0:
        _store(dqbase, dq_d, mmask, D, d1, dq1 * scale)


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


def _strides(*tensors: Tensor) -> tuple[int, ...]:
    """The ``[B, H, L, D]`` strides of each tensor, in the kernels' argument order."""
    return tuple(s for t in tensors for s in t.stride())


def fwd_launch(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, scale: float) -> Launch:
    b, h, lq, d = q.shape
    return Launch(_fwd_kernel, lambda m: (triton.cdiv(lq, m["BLOCK_M"]), b * h),
                  (q, k, v, o, lse, scale * LOG2E, lq, k.shape[2], h, d, *_strides(q, k, v, o)), _meta(q, k))


def bwd_launches(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, delta: Tensor, dq: Tensor,
                 dk: Tensor, dv: Tensor, scale: float) -> list[Launch]:
    """dQ first (it also writes δ), then dK/dV."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    common = (scale, scale * LOG2E, lq, lk, h, d)
    return [Launch(_bwd_dq_kernel, lambda m: (triton.cdiv(lq, m["BLOCK_M"]), b * h),
                   (q, k, v, do, o, lse, delta, dq, *common, *_strides(q, k, v, do, o, dq)), _meta(q, k)),
            Launch(_bwd_dkdv_kernel, lambda m: (triton.cdiv(lk, m["BLOCK_N"]), b * h),
                   (q, k, v, do, lse, delta, dk, dv, *common, *_strides(q, k, v, do, dk, dv)), _meta(q, k))]


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
