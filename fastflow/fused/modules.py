"""Drop-in modules over the fused ops (see ``fastflow.fused.swap`` to put them into a model)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fastflow.errors import ShapeError
from fastflow.fused.ops import attention, group_norm
from fastflow.fused.runtime import warn_once


class FusedGroupNorm(nn.Module):
    """``act(GN(x)·(1 + scale) + shift)`` with the Triton kernel. Parameters are ``weight`` and
    ``bias`` exactly as in ``nn.GroupNorm`` (its state dict loads unchanged); ``silu`` fuses the
    activation, ``scale``/``shift`` ``[N, C]`` the UNet's time modulation."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 silu: bool = False, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ShapeError(f"FusedGroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.affine, self.silu = affine, silu
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_module(cls, m: nn.Module, silu: bool = False) -> FusedGroupNorm:
        """From an ``nn.GroupNorm`` or a fastflow ``GroupNormAct`` (same parameters, shared)."""
        fused = cls(m.num_groups, m.num_channels, m.eps, affine=m.weight is not None,
                    silu=silu or bool(getattr(m, "act", False)))
        if m.weight is not None:
            fused.weight, fused.bias = m.weight, m.bias
        return fused

    def forward(self, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
        return group_norm(x, self.weight, self.bias, self.num_groups, self.eps, scale, shift, self.silu)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, silu={self.silu}"


class FusedAttention(nn.Module):
    """The attention core ``softmax(q kᵀ · scale) v`` on ``[B, H, L, D]`` with the Triton kernel."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
        return attention(q, k, v, scale)


class FusedAttnProcessor:
    """A diffusers attention processor (``Attention.set_processor``) with the fused core; the
    rest mirrors diffusers' ``AttnProcessor2_0``. An attention mask takes the reference."""

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        b, seq, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(b, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if attention_mask is None:
            out = attention(query, key, value, attn.scale)
        else:
            warn_once("diffusers-mask", "attention with an attention mask is not fused")
            out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                                   scale=attn.scale)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
