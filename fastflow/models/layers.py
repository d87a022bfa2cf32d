"""UNet building blocks. Every GroupNorm(+SiLU) is a :class:`GroupNormAct` and every attention a
:class:`Attention`, so one swap (``fastflow.fused``) changes them all."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow.errors import ConfigError, ShapeError
from fastflow.models.reference import attention_math, forward_ad, group_norm_ref


def num_groups(channels: int) -> int:
    """The family's GroupNorm group count ``min(C // 4, 32)``."""
    return max(1, min(channels // 4, 32))


class GroupNormAct(nn.Module):
    """``act(GN(x)·(1 + scale) + shift)``: GroupNorm, optional scale-shift, optional SiLU.

    Parameters are named ``weight`` and ``bias`` like ``nn.GroupNorm``, so state dicts load
    unchanged. ``scale``/``shift`` are ``[B, C]`` (the UNet's time modulation).
    """

    def __init__(self, channels: int, groups: int | None = None, act: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.num_channels, self.num_groups = channels, groups or num_groups(channels)
        self.eps, self.act = eps, act
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
        # computed in fp32 for fp16/bf16 inputs (also what exported fp16 graphs keep)
        return group_norm_ref(x, self.weight, self.bias, self.num_groups, self.eps, scale, shift, self.act)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, groups={self.num_groups}, act={self.act}, eps={self.eps}"


class SDPA(nn.Module):
    """The attention core ``softmax(q kᵀ/√d) v`` on ``[B, H, L, D]``; a separate module so that
    ``fastflow.fused.swap`` can replace it per layer (``FusedAttention``). Under forward-mode AD
    (``torch.func.jvp``) it is written out: SDPA's fused CPU kernels have no JVP. Under CPU bf16
    autocast it runs in float32: PyTorch's CPU flash-attention backward in bf16 took 10 ms a call
    against 1.1 ms in float32 (digits teacher, batch 128; ``docs/training.md``)."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if forward_ad(q, k, v):
            return attention_math(q, k, v, q.shape[-1] ** -0.5)
        if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head attention on token sequences ``[B, L, C]``; cross-attention when
    ``context_dim`` is set (keys/values from a ``[B, S, context_dim]`` context)."""

    def __init__(self, dim: int, context_dim: int | None = None, head_dim: int | None = None) -> None:
        super().__init__()
        head_dim = head_dim or dim
        if dim % head_dim:
            raise ConfigError(f"attention dim {dim} is not a multiple of head_dim {head_dim}")
        self.heads, self.head_dim = dim // head_dim, head_dim
        kv = context_dim or dim
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(kv, dim), nn.Linear(kv, dim)
        self.out = nn.Linear(dim, dim)
        self.core = SDPA()

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        ctx = x if context is None else context
        q, k, v = self._split(self.q(x)), self._split(self.k(ctx)), self._split(self.v(ctx))
        o = self.core(q, k, v)
        b, _, n, _ = o.shape
        return self.out(o.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


def resample2x(x: Tensor, resample: str | None) -> Tensor:
    """The UNet's 2× resampling: ``"up"`` nearest-neighbour, ``"down"`` 2×2 average, ``None`` none."""
    if resample == "down":
        return F.avg_pool2d(x, 2)
    if resample == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return x


def resampled_size(h: int, w: int, resample: str | None) -> tuple[int, int]:
    """The ``(H, W)`` :func:`resample2x` makes of an ``H×W`` map."""
    return (2 * h, 2 * w) if resample == "up" else (h // 2, w // 2) if resample == "down" else (h, w)


def interval_length(t: Tensor, t_end: Tensor | None, times: int) -> Tensor | None:
    """``t_end − t`` (``[B]``) for a two-time model (``times = 2``; ``t_end=None`` means ``t``: the
    instantaneous velocity), ``None`` for a one-time model, which refuses a ``t_end``."""
    if times == 1:
        if t_end is not None:
            raise ShapeError("this model takes one time; t_end needs a two-time model (model.times: 2)")
        return None
    if t_end is None:
        return torch.zeros_like(t)
    t_end = t_end.expand(t.shape[0]) if t_end.dim() == 0 else t_end
    if t_end.shape != t.shape:
        raise ShapeError(f"t_end must be {list(t.shape)} (or a scalar), got {tuple(t_end.shape)}")
    return t_end - t


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (already scaled) times ``[B] → [B, dim]`` (DDPM's positional)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class ResBlock(nn.Module):
    """DDPM++ (BigGAN-style) residual block, optionally resampling by 2.

    ``h = conv(GN→SiLU(x)); h += Dense(SiLU(temb))`` (or scale-shift ``GN(h)·(1+s)+b``);
    ``h = conv(dropout(GN→SiLU(h)))``; output ``(skip(x) + h) / √2``.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float = 0.0,
                 resample: str | None = None, scale_shift: bool = False,
                 skip_rescale: bool = True) -> None:
        super().__init__()
        self.resample, self.scale_shift, self.skip_rescale = resample, scale_shift, skip_rescale
        self.norm0 = GroupNormAct(in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(temb_dim, out_ch * (2 if scale_shift else 1))
        self.norm1 = GroupNormAct(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if (in_ch != out_ch or resample) else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = resample2x(self.norm0(x), self.resample)
        x = resample2x(x, self.resample)
        h = self.conv0(h)
        e = self.emb(F.silu(temb))
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm1(h, scale, shift)
        else:
            h = self.norm1(h + e[:, :, None, None])
        h = self.conv1(self.dropout(h))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class AttnBlock(nn.Module):
    """Self-attention over the H·W positions (+ cross-attention to a token context)."""

    def __init__(self, channels: int, context_dim: int = 0, head_dim: int | None = None,
                 skip_rescale: bool = True) -> None:
        super().__init__()
        self.skip_rescale = skip_rescale
        self.norm = GroupNormAct(channels, act=False)
        self.attn = Attention(channels, head_dim=head_dim)
        if context_dim:
            self.norm_cross = GroupNormAct(channels, act=False)
            self.cross = Attention(channels, context_dim=context_dim, head_dim=head_dim)
        else:
            self.norm_cross = self.cross = None

    def _residual(self, x: Tensor, h: Tensor) -> Tensor:
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h

    @staticmethod
    def _tokens(x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        b, c, hh, ww = x.shape
        h = self.attn(self._tokens(self.norm(x)))
        x = self._residual(x, h.transpose(1, 2).reshape(b, c, hh, ww))
        if self.cross is not None:
            h = self.cross(self._tokens(self.norm_cross(x)), context)
            x = self._residual(x, h.transpose(1, 2).reshape(b, c, hh, ww))
        return x
