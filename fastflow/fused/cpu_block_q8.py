r"""The CPU block kernel with int8 products (``kernels/cpu/conv_block_q8.cpp``): ``--fused cpu --quantize int8``.

Weights are quantised once, per output channel and symmetric (:math:`w \approx s_w\,q_w`, :math:`q_w \in
[-127, 127]`), and packed by four input channels (:func:`quantize_weight`). Activations are quantised inside
the kernel, per sample over their own range, after the float prologue (GroupNorm, modulation, SiLU,
resampling): :math:`s = (\max(a, 0) - \min(a, 0)) / L`, :math:`z = \mathrm{round}(-\min(a, 0)/s)`,
:math:`q = \mathrm{clamp}(\mathrm{round}(a/s) + z, 0, L)`, with :math:`L` = :func:`int8_levels` (255 with VNNI,
127 with ``maddubs``). No calibration set is needed: the range is each call's own. Products sum in int32; the
epilogue dequantises and adds the bias, the time embedding and the residual in float.

Layers as for the fp32 kernel: the op (:func:`conv_block_q8`; reference :func:`conv_block_q8_ref`, the same
quantisation in PyTorch), the module (:class:`Q8ResBlock`) and the swap (:func:`quantize_cpu_blocks`, after
:func:`~fastflow.fused.cpu_block.swap_cpu_blocks`). The stem (``conv_in``, on the noise), the output
convolution and attention stay float.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow.errors import DTypeError, ShapeError
from fastflow.fused.cpu_block import RESAMPLE, CpuResBlock, check_inputs, load
from fastflow.fused.swap import SwapReport, replace_module, share_as
from fastflow.models.layers import GroupNormAct, resample2x
from fastflow.models.reference import group_norm_ref

Norm = tuple[Tensor, Tensor, int, float]


def int8_levels() -> int:
    """The activations' top level on this CPU: 255 with VNNI dot products, else 127 (``maddubs``)."""
    load()
    return int(torch.ops.fastflow_cpu.int8_levels())


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``[Cout, C, k, k]`` float → ``(qweight [Cout, ⌈C/4⌉, k·k, 4]`` int8, ``w_scale [Cout]`` float32): per
    output channel, symmetric, ``w_scale = max|w| / 127`` (1 for an all-zero channel); input channels padded
    to a multiple of 4 with zeros and packed four to a 32-bit lane."""
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] not in (1, 3):
        raise ShapeError(f"quantize_weight: want [Cout, C, 3, 3] or [Cout, C, 1, 1], got {tuple(weight.shape)}")
    w = weight.detach().float()
    cout, c, taps = w.shape[0], w.shape[1], w.shape[2] * w.shape[3]
    scale = w.abs().amax(dim=(1, 2, 3)) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(w / scale[:, None, None, None]), -127, 127).to(torch.int8)
    blocks = math.ceil(c / 4)
    q = F.pad(q.reshape(cout, c, taps), (0, 0, 0, 4 * blocks - c)).reshape(cout, blocks, 4, taps)
    return q.permute(0, 1, 3, 2).contiguous(), scale.contiguous()


def dequantize_weight(qweight: Tensor, w_scale: Tensor, cin: int) -> Tensor:
    """The float ``[Cout, cin, k, k]`` weight a packed int8 weight stands for."""
    cout, blocks, taps, _ = qweight.shape
    k = math.isqrt(taps)
    w = qweight.permute(0, 1, 3, 2).reshape(cout, 4 * blocks, taps)[:, :cin].to(torch.float64)
    return (w * w_scale.double()[:, None, None]).reshape(cout, cin, k, k)


def quantize_activation(a: Tensor, levels: int) -> Tensor:
    """Each sample of ``a`` on the kernel's grid, dequantised: ``(q − z)·s`` (float32 arithmetic as the kernel's)."""
    flat = a.flatten(1)
    lo, hi = flat.amin(1).clamp(max=0), flat.amax(1).clamp(min=0)
    s = (hi - lo) / levels
    s = torch.where(s > 0, s, torch.ones_like(s))
    inv = 1 / s
    z = torch.round(-lo * inv)
    shape = (-1,) + (1,) * (a.dim() - 1)
    q = torch.clamp(torch.round(a * inv.view(shape)) + z.view(shape), 0, levels)
    return ((q - z.view(shape)).double() * s.double().view(shape))


def conv_block_q8_ref(x: Tensor, qweight: Tensor, w_scale: Tensor, bias: Tensor | None, norm: Norm | None,
                      scale: Tensor | None = None, shift: Tensor | None = None, act: bool = True,
                      resample: str | None = None, add: Tensor | None = None, residual: Tensor | None = None,
                      out_scale: float = 1.0, levels: int | None = None) -> Tensor:
    """:func:`conv_block_q8` in PyTorch: the float prologue, the activations quantised as the kernel does,
    the convolution of the integers in float64 (exact), then the float epilogue."""
    if norm is not None:
        a = group_norm_ref(x, norm[0], norm[1], norm[2], norm[3], scale, shift, act)
    else:
        a = F.silu(x) if act else x
    a = quantize_activation(resample2x(a, resample), levels or int8_levels())
    w = dequantize_weight(qweight, w_scale, x.shape[1])
    y = F.conv2d(a, w, None if bias is None else bias.double(), padding=w.shape[-1] // 2)
    if add is not None:
        y = y + add.double()[:, :, None, None]
    if residual is not None:
        y = y + residual.double()
    return (y * out_scale).float()


def conv_block_q8(x: Tensor, qweight: Tensor, w_scale: Tensor, bias: Tensor | None, norm: Norm | None,
                  scale: Tensor | None = None, shift: Tensor | None = None, act: bool = True,
                  resample: str | None = None, add: Tensor | None = None, residual: Tensor | None = None,
                  out_scale: float = 1.0) -> Tensor:
    """:func:`conv_block_q8_ref` with the CPU kernel (float32 CPU tensors but the int8 ``qweight``;
    :class:`DTypeError` / :class:`ShapeError` otherwise; inference only)."""
    load()
    if qweight.dtype != torch.int8 or w_scale.dtype != torch.float32:
        raise DTypeError(f"conv_block_q8: qweight int8 and w_scale float32, got {qweight.dtype} and {w_scale.dtype}")
    blocks = math.ceil(x.shape[1] / 4) if x.dim() == 4 else -1
    if qweight.dim() != 4 or qweight.shape[1] != blocks or qweight.shape[2] not in (1, 9) or qweight.shape[3] != 4 \
            or tuple(w_scale.shape) != (qweight.shape[0],):
        raise ShapeError(f"conv_block_q8: qweight [Cout, {blocks}, 9 or 1, 4] and w_scale [Cout] for x "
                         f"{tuple(x.shape)}, got {tuple(qweight.shape)} and {tuple(w_scale.shape)}")
    check_inputs(x, qweight.shape[0], bias, norm, scale, shift, resample, add, residual)
    nw, nb, groups, eps = norm if norm is not None else (None, None, 1, 0.0)
    c = (lambda t: None if t is None else t.contiguous())  # noqa: E731
    return torch.ops.fastflow_cpu.conv_block_q8(
        x.contiguous(), qweight.contiguous(), w_scale.contiguous(), c(bias), c(nw), c(nb), c(scale), c(shift),
        groups, eps, act, RESAMPLE[resample], c(add), c(residual), out_scale)


class Q8ResBlock(CpuResBlock):
    """A :class:`~fastflow.fused.cpu_block.CpuResBlock` whose convolutions (and 1×1 skip) run with int8
    products; the packed weights are buffers outside the state dict (its keys are unchanged)."""

    CONVS = ("conv0", "conv1", "skip")

    def quantize(self) -> Q8ResBlock:
        for name in self.CONVS:
            conv = getattr(self, name)
            if conv is not None:
                q, s = quantize_weight(conv.weight)
                self.register_buffer(f"{name}_q8", q, persistent=False)
                self.register_buffer(f"{name}_scale", s, persistent=False)
        return self

    def conv(self, name: str, x: Tensor, norm: GroupNormAct | None, **kw: Any) -> Tensor:
        fused = None if norm is None else (norm.weight, norm.bias, norm.num_groups, norm.eps)
        return conv_block_q8(x, getattr(self, f"{name}_q8"), getattr(self, f"{name}_scale"), getattr(self, name).bias,
                             fused, **kw)


def quantize_cpu_blocks(model: nn.Module) -> SwapReport:
    """Every :class:`~fastflow.fused.cpu_block.CpuResBlock` of a model swapped by
    :func:`~fastflow.fused.cpu_block.swap_cpu_blocks` → :class:`Q8ResBlock`, its weights quantised."""
    report = SwapReport()
    for name, m in list(model.named_modules()):
        if type(m) is CpuResBlock:
            replace_module(model, name, share_as(Q8ResBlock, m).quantize())
            report.swapped.append((name, "CpuResBlock", "Q8ResBlock"))
    return report
