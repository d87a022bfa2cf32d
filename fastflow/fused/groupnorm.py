r"""Triton GroupNorm (+ scale-shift, + SiLU), forward and backward, registered as
``torch.ops.fastflow.group_norm_fwd`` / ``group_norm_bwd`` with fake and autograd rules.

Layout: ``x`` is read as ``[N, C, HW]`` through its strides, so NCHW-contiguous and
channels-last tensors are both taken without a copy. Statistics are fp32 of shifted data
(``x − K``, K the group's first element): each program reduces tiles with a per-tile two-pass
mean/M2 and merges them with Chan's parallel formula. With enough ``N·G`` programs one kernel
does both passes over its group (the second read mostly from L2); when they would leave the GPU
idle (batch 1) the spatial range is split over ``SPLIT`` programs whose partials
``(count, mean, M2)`` a first kernel writes and the apply kernel merges exactly.

Backward, with :math:`\hat x` the normalised input, :math:`u = (\hat x\gamma + \beta)(1 + s) + b`
and :math:`\delta = \partial L/\partial u` (through SiLU when fused):

.. math:: d\gamma_c = \textstyle\sum \delta(1+s)\hat x,\ d\beta_c = \sum \delta(1+s),\
          ds_{n,c} = \sum_{hw} \delta(\hat x\gamma + \beta),\ db_{n,c} = \sum_{hw}\delta,\\
          dx = r\big(g - \overline{g} - \hat x\,\overline{g\hat x}\big),\quad g = \delta(1+s)\gamma

(means over the group): one kernel per group (partial sums, then ``dx`` from the same program),
or, when split, a partial-sums launch, the group sums in PyTorch, and a ``dx`` launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op

from fastflow.fused.runtime import Launch, flat_spatial, next_pow2, require_kernel_device, sm_count


@triton.jit
def _load_tile(ptr, base, ch, cmask, hw, hw_end, s_c, s_hw):
    m = cmask[:, None] & (hw[None, :] < hw_end)
    x = tl.load(ptr + base + ch[:, None] * s_c + hw[None, :] * s_hw, mask=m, other=0.0).to(tl.float32)
    return x, m


@triton.jit
def _group_shift(X, base, g, CPG, s_c):
    """The group's first element: statistics are taken of ``x − K`` (shifted data), so a large
    common offset does not cancel in fp32."""
    return tl.load(X + base + (g * CPG).to(tl.int64) * s_c).to(tl.float32)


@triton.jit
def _program(X, G, CPG, HW, s_n, s_c, CHUNK, BLOCK_C: tl.constexpr):
    """This program's group and spatial chunk: ``(ng, sp, n, ch, cmask, base, k, start, end)`` with
    ``ch`` the group's channels (padded to ``BLOCK_C``), ``base`` the sample's offset, ``k`` the
    shift, and ``[start, end)`` the chunk of H·W."""
    ng = tl.program_id(0)
    sp = tl.program_id(1)
    n = ng // G
    c = tl.arange(0, BLOCK_C)
    cmask = c < CPG
    ch = (ng % G) * CPG + c
    base = n.to(tl.int64) * s_n
    k = _group_shift(X, base, ng % G, CPG, s_c)
    start = sp * CHUNK
    return ng, sp, n, ch, cmask, base, k, start, tl.minimum(start + CHUNK, HW)


@triton.jit
def _chunk_stats(X, base, ch, cmask, k, start, end, s_c, s_hw, BLOCK_HW: tl.constexpr):
    """``(count, mean, M2)`` of ``x − K`` over a chunk: per-tile two-pass, Chan merge across tiles."""
    cnt = 0.0
    mean = 0.0
    m2 = 0.0
    for off in range(start, end, BLOCK_HW):
        hw = off + tl.arange(0, BLOCK_HW)
        x, m = _load_tile(X, base, ch, cmask, hw, end, s_c, s_hw)
        x = tl.where(m, x - k, 0.0)
        nb = tl.sum(m.to(tl.float32))
        mb = tl.sum(x) / nb
        d = tl.where(m, x - mb, 0.0)
        m2b = tl.sum(d * d)
        tot = cnt + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta * delta * (cnt * nb / tot)
        cnt = tot
    return cnt, mean, m2


@triton.jit
def _stats_kernel(X, PART, HW, CPG, G, s_n, s_c, s_hw, CHUNK, SPLIT,
                  BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    ng, sp, _, ch, cmask, base, k, start, end = _program(X, G, CPG, HW, s_n, s_c, CHUNK, BLOCK_C)
    cnt, mean, m2 = _chunk_stats(X, base, ch, cmask, k, start, end, s_c, s_hw, BLOCK_HW)
    p = PART + (ng * SPLIT + sp) * 3
    tl.store(p, cnt)
    tl.store(p + 1, mean)
    tl.store(p + 2, m2)


@triton.jit
def _merge_stats(PART, ng, SPLIT, eps, BLOCK_S: tl.constexpr):
    s = tl.arange(0, BLOCK_S)
    sm = s < SPLIT
    p = PART + (ng * SPLIT + s) * 3
    pc = tl.load(p, mask=sm, other=0.0)
    pm = tl.load(p + 1, mask=sm, other=0.0)
    pm2 = tl.load(p + 2, mask=sm, other=0.0)
    tot = tl.sum(pc)
    mean = tl.sum(pc * pm) / tot
    d = pm - mean
    m2 = tl.sum(pm2) + tl.sum(tl.where(sm, pc * d * d, 0.0))
    return mean, 1.0 / tl.sqrt(m2 / tot + eps)


@triton.jit
def _channel_coeffs(W, B, S, T, n, ch, cmask, C, mean, rstd,
                    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_S: tl.constexpr, HAS_T: tl.constexpr):
    """Per-channel ``a, b`` with ``u = x·a + b``, plus ``γ``, ``β`` and ``1 + s``."""
    zero = tl.zeros_like(ch).to(tl.float32)
    w = zero + 1.0
    bb = zero
    one_s = zero + 1.0
    t = zero
    if HAS_W:
        w = tl.load(W + ch, mask=cmask, other=1.0).to(tl.float32)
    if HAS_B:
        bb = tl.load(B + ch, mask=cmask, other=0.0).to(tl.float32)
    if HAS_S:
        one_s = 1.0 + tl.load(S + n * C + ch, mask=cmask, other=0.0).to(tl.float32)
    if HAS_T:
        t = tl.load(T + n * C + ch, mask=cmask, other=0.0).to(tl.float32)
    a = w * rstd * one_s
    b = (bb - mean * rstd * w) * one_s + t
    return a, b, w, bb, one_s


@triton.jit
def _apply_kernel(X, Y, W, B, S, T, PART, MEAN, RSTD, C, HW, CPG, G, s_n, s_c, s_hw, y_n, y_c, y_hw,
                  CHUNK, SPLIT, eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_S: tl.constexpr,
                  HAS_T: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
                  BLOCK_S: tl.constexpr, ONE_PASS: tl.constexpr):
    ng, sp, n, ch, cmask, base, k, start, end = _program(X, G, CPG, HW, s_n, s_c, CHUNK, BLOCK_C)
    if ONE_PASS:  # one program per group: statistics here, the re-read of the group mostly hits L2
        cnt, mean, m2 = _chunk_stats(X, base, ch, cmask, k, start, end, s_c, s_hw, BLOCK_HW)
        rstd = 1.0 / tl.sqrt(m2 / cnt + eps)
    else:
        mean, rstd = _merge_stats(PART, ng, SPLIT, eps, BLOCK_S)
    if sp == 0:
        tl.store(MEAN + ng, mean)
        tl.store(RSTD + ng, rstd)
    a, b, _, _, _ = _channel_coeffs(W, B, S, T, n, ch, cmask, C, mean, rstd, HAS_W, HAS_B, HAS_S, HAS_T)
    ybase = n.to(tl.int64) * y_n
    for off in range(start, end, BLOCK_HW):
        hw = off + tl.arange(0, BLOCK_HW)
        x, m = _load_tile(X, base, ch, cmask, hw, end, s_c, s_hw)
        u = (x - k) * a[:, None] + b[:, None]
        if SILU:
            u = u * tl.sigmoid(u)
        tl.store(Y + ybase + ch[:, None] * y_c + hw[None, :] * y_hw, u.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _grad_u(X, DY, base, dbase, ch, cmask, hw, end, s_c, s_hw, d_c, d_hw, k, a, b, SILU: tl.constexpr):
    """``(x − K, ∂L/∂u, mask)`` of a tile."""
    x, m = _load_tile(X, base, ch, cmask, hw, end, s_c, s_hw)
    x = x - k
    dy = tl.load(DY + dbase + ch[:, None] * d_c + hw[None, :] * d_hw, mask=m, other=0.0).to(tl.float32)
    if SILU:
        u = x * a[:, None] + b[:, None]
        sg = tl.sigmoid(u)
        dy = dy * sg * (1.0 + u * (1.0 - sg))
    return x, dy, m


@triton.jit
def _bwd_kernel(X, DY, DX, W, B, S, T, MEAN, RSTD, PW, PB, PS, PT, GA, GB, C, HW, CPG, G,
                s_n, s_c, s_hw, d_n, d_c, d_hw, o_n, o_c, o_hw, CHUNK, SPLIT, inv_m,
                HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_S: tl.constexpr, HAS_T: tl.constexpr,
                SILU: tl.constexpr, REDUCE: tl.constexpr, APPLY: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """``REDUCE``: per-channel partial sums of this chunk → ``PW, PB, PS, PT [N, SPLIT, C]``.
    ``APPLY``: ``dx`` of this chunk, with the group sums ``Σg``, ``Σg·x̂`` from the partials of this
    program (both set: one program per group, the re-read mostly from L2) or from ``GA``, ``GB``."""
    ng, sp, n, ch, cmask, base, k, start, end = _program(X, G, CPG, HW, s_n, s_c, CHUNK, BLOCK_C)
    mean = tl.load(MEAN + ng)
    rstd = tl.load(RSTD + ng)
    a, b, w, bb, one_s = _channel_coeffs(W, B, S, T, n, ch, cmask, C, mean, rstd, HAS_W, HAS_B, HAS_S, HAS_T)
    dbase = n.to(tl.int64) * d_n
    if REDUCE:
        acc_w = tl.zeros((BLOCK_C,), tl.float32)  # Σ δ(1+s) x̂
        acc_b = tl.zeros((BLOCK_C,), tl.float32)  # Σ δ(1+s)
        acc_s = tl.zeros((BLOCK_C,), tl.float32)  # Σ δ (x̂γ + β)
        acc_t = tl.zeros((BLOCK_C,), tl.float32)  # Σ δ
        for off in range(start, end, BLOCK_HW):
            hw = off + tl.arange(0, BLOCK_HW)
            x, du, m = _grad_u(X, DY, base, dbase, ch, cmask, hw, end, s_c, s_hw, d_c, d_hw, k, a, b, SILU)
            xhat = tl.where(m, (x - mean) * rstd, 0.0)
            dsum = tl.sum(du, axis=1)
            dxs = tl.sum(du * xhat, axis=1)
            acc_w += dxs * one_s
            acc_b += dsum * one_s
            acc_s += dxs * w + dsum * bb
            acc_t += dsum
        out = (n * SPLIT + sp) * C + ch
        tl.store(PW + out, acc_w, mask=cmask)
        tl.store(PB + out, acc_b, mask=cmask)
        tl.store(PS + out, acc_s, mask=cmask)
        tl.store(PT + out, acc_t, mask=cmask)
    if APPLY:
        if REDUCE:
            mg = tl.sum(acc_b * w) * inv_m  # mean of g = δ(1+s)γ over the group
            mgx = tl.sum(acc_w * w) * inv_m  # mean of g·x̂
        else:
            mg = tl.load(GA + ng) * inv_m
            mgx = tl.load(GB + ng) * inv_m
        gcoef = one_s * w
        obase = n.to(tl.int64) * o_n
        for off in range(start, end, BLOCK_HW):
            hw = off + tl.arange(0, BLOCK_HW)
            x, du, m = _grad_u(X, DY, base, dbase, ch, cmask, hw, end, s_c, s_hw, d_c, d_hw, k, a, b, SILU)
            xhat = (x - mean) * rstd
            dx = rstd * (du * gcoef[:, None] - mg - xhat * mgx)
            tl.store(DX + obase + ch[:, None] * o_c + hw[None, :] * o_hw, dx.to(DX.dtype.element_ty), mask=m)


def auto_split(programs: int, sms: int) -> int:
    """Programs per group so that ``N·G`` groups fill about twice the GPU's SMs."""
    return triton.cdiv(2 * sms, programs)


def _geometry(x: Tensor, groups: int, split: int) -> tuple[int, int, int, int, int, int]:
    """``(HW, CPG, BLOCK_C, BLOCK_HW, CHUNK, SPLIT)``: tiles of ~4k elements, and a split of the
    spatial range when ``N·G`` programs are fewer than twice the SMs (or as forced by ``split``)."""
    n, c = x.shape[:2]
    hw = x[0, 0].numel()
    cpg = c // groups
    block_c = next_pow2(cpg)
    block_hw = max(16, min(next_pow2(hw), max(1, 4096 // block_c)))
    tiles = triton.cdiv(hw, block_hw)
    want = split if split > 0 else auto_split(n * groups, sm_count(x.device))
    want = max(1, min(want, tiles, 256))
    chunk = triton.cdiv(tiles, want) * block_hw
    return hw, cpg, block_c, block_hw, chunk, triton.cdiv(hw, chunk)


def _strides(t: Tensor) -> tuple[int, int, int]:
    """``(s_n, s_c, s_hw)`` of ``[N, C, *spatial]`` read as ``[N, C, HW]``."""
    return t.stride(0), t.stride(1), t.stride(-1) if t.dim() > 2 else 1


def _flags(weight, bias, scale, shift) -> dict[str, bool]:  # noqa: ANN001
    return {"HAS_W": weight is not None, "HAS_B": bias is not None, "HAS_S": scale is not None,
            "HAS_T": shift is not None}


def fwd_launches(x: Tensor, y: Tensor, weight: Tensor | None, bias: Tensor | None, scale: Tensor | None,
                 shift: Tensor | None, mean: Tensor, rstd: Tensor, groups: int, eps: float, silu: bool,
                 split: int) -> list[Launch]:
    """The statistics launch (only when the spatial range is split), then the apply launch."""
    n, c = x.shape[:2]
    hw, cpg, block_c, block_hw, chunk, nsplit = _geometry(x, groups, split)
    part = x.new_empty(n * groups * nsplit * 3, dtype=torch.float32) if nsplit > 1 else None
    grid = (n * groups, nsplit)
    launches = []
    if nsplit > 1:  # split reduction: partial statistics first, merged exactly by the apply kernel
        launches.append(Launch(_stats_kernel, grid, (x, part, hw, cpg, groups, *_strides(x), chunk, nsplit),
                               {"BLOCK_C": block_c, "BLOCK_HW": block_hw}))
    launches.append(Launch(_apply_kernel, grid, (x, y, weight, bias, scale, shift, part, mean, rstd, c, hw, cpg,
                                                 groups, *_strides(x), *_strides(y), chunk, nsplit, eps),
                           {**_flags(weight, bias, scale, shift), "SILU": silu, "BLOCK_C": block_c,
                            "BLOCK_HW": block_hw, "BLOCK_S": next_pow2(nsplit), "ONE_PASS": nsplit == 1}))
    return launches


@triton_op("fastflow::group_norm_fwd", mutates_args=())
def group_norm_fwd(x: Tensor, weight: Tensor | None, bias: Tensor | None, scale: Tensor | None,
                   shift: Tensor | None, groups: int, eps: float, silu: bool,
                   split: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean [N, G], rstd [N, G])``, the mean taken relative to each group's first element
    (for the backward). Kernel only: ``fastflow.fused.group_norm`` routes CPU tensors to the reference."""
    require_kernel_device(x, "group_norm_fwd")
    y = torch.empty_like(x)
    mean = x.new_empty((x.shape[0], groups), dtype=torch.float32)
    rstd = torch.empty_like(mean)
    for launch in fwd_launches(x, y, weight, bias, scale, shift, mean, rstd, groups, eps, silu, split):
        launch()
    return y, mean, rstd


@group_norm_fwd.register_fake
def _(x, weight, bias, scale, shift, groups, eps, silu, split):  # noqa: ANN001, ANN202
    stats = x.new_empty((x.shape[0], groups), dtype=torch.float32)
    return torch.empty_like(x), stats, torch.empty_like(stats)


def bwd_launch(dy: Tensor, x: Tensor, dx: Tensor, weight: Tensor | None, bias: Tensor | None,
               scale: Tensor | None, shift: Tensor | None, mean: Tensor, rstd: Tensor, parts: Tensor,
               groups: int, silu: bool, split: int, reduce: bool, apply: bool, ga: Tensor | None = None,
               gb: Tensor | None = None) -> Launch:
    """One backward launch: ``reduce`` (partial sums into ``parts [4, N, SPLIT, C]``) and/or
    ``apply`` (``dx``, with the group sums ``ga``, ``gb`` when not reducing in the same program)."""
    n, c = x.shape[:2]
    hw, cpg, block_c, block_hw, chunk, nsplit = _geometry(x, groups, split)
    return Launch(_bwd_kernel, (n * groups, nsplit),
                  (x, dy, dx, weight, bias, scale, shift, mean, rstd, parts[0], parts[1], parts[2], parts[3], ga, gb,
                   c, hw, cpg, groups, *_strides(x), *_strides(dy), *_strides(dx), chunk, nsplit, 1.0 / (cpg * hw)),
                  {**_flags(weight, bias, scale, shift), "SILU": silu, "REDUCE": reduce, "APPLY": apply,
                   "BLOCK_C": block_c, "BLOCK_HW": block_hw})


def split_count(x: Tensor, groups: int, split: int) -> int:
    """How many programs share one group's spatial range (1: one program per group)."""
    return _geometry(x, groups, split)[-1]


@triton_op("fastflow::group_norm_bwd", mutates_args=())
def group_norm_bwd(dy: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None, scale: Tensor | None,
                   shift: Tensor | None, mean: Tensor, rstd: Tensor, groups: int, eps: float, silu: bool,
                   split: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias, dscale, dshift)`` in fp32 for the parameters (empty when absent)."""
    require_kernel_device(x, "group_norm_bwd")
    n, c = x.shape[:2]
    nsplit = split_count(x, groups, split)
    parts = x.new_empty((4, n, nsplit, c), dtype=torch.float32)
    dx = torch.empty_like(x)
    args = (dy, x, dx, weight, bias, scale, shift, mean, rstd, parts, groups, silu, split)
    if nsplit == 1:
        bwd_launch(*args, reduce=True, apply=True)()
        per_nc = parts[:, :, 0]  # [4, N, C]
    else:  # split: partial sums, the group sums Σg and Σg·x̂ from them, then dx
        bwd_launch(*args, reduce=True, apply=False)()
        per_nc = parts.sum(2)
        w = weight.float() if weight is not None else torch.ones(c, device=x.device)
        ga = (per_nc[1] * w).view(n, groups, c // groups).sum(2).contiguous()
        gb = (per_nc[0] * w).view(n, groups, c // groups).sum(2).contiguous()
        bwd_launch(*args, reduce=False, apply=True, ga=ga, gb=gb)()

    def empty() -> Tensor:
        return x.new_empty(0, dtype=torch.float32)

    return (dx, per_nc[0].sum(0) if weight is not None else empty(), per_nc[1].sum(0) if bias is not None else empty(),
            per_nc[2].clone() if scale is not None else empty(), per_nc[3].clone() if shift is not None else empty())


@group_norm_bwd.register_fake
def _(dy, x, weight, bias, scale, shift, mean, rstd, groups, eps, silu, split):  # noqa: ANN001, ANN202
    n, c = x.shape[:2]
    shapes = [(c,) if weight is not None else (0,), (c,) if bias is not None else (0,),
              (n, c) if scale is not None else (0,), (n, c) if shift is not None else (0,)]
    return (torch.empty_like(x), *(x.new_empty(sh, dtype=torch.float32) for sh in shapes))


def _setup(ctx, inputs, output) -> None:  # noqa: ANN001
    x, weight, bias, scale, shift, groups, eps, silu, split = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
    ctx.groups, ctx.eps, ctx.silu, ctx.split = groups, eps, silu, split


def _backward(ctx, dy, _dmean, _drstd):  # noqa: ANN001, ANN202
    x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
    dx, dw, db, ds, dt = group_norm_bwd(dy if flat_spatial(dy) else dy.contiguous(), x, weight, bias,
                                        scale, shift, mean, rstd, ctx.groups, ctx.eps, ctx.silu, ctx.split)
    cast = (lambda g, ref: None if ref is None else g.to(ref.dtype))  # noqa: E731
    return dx, cast(dw, weight), cast(db, bias), cast(ds, scale), cast(dt, shift), None, None, None, None


group_norm_fwd.register_autograd(_backward, setup_context=_setup)
