"""The UNet family (DDPM++ / NCSN++ with BigGAN resampling blocks) and its config.

``UNet(config)(x, t, cond=None) → v``: ``x`` is ``[B, C, H, W]``, ``t`` a ``[B]`` float
tensor in [0, 1] (scaled by ``config.t_scale`` inside), ``cond`` optional (below). A two-time
model (``times = 2``, MeanFlow) also takes ``t_end`` and returns the average velocity over
``[t, t_end]``; the interval length ``t_end − t`` has its own embedding, added to the time's.
``cond``:

* a ``[B]`` long tensor of class labels (``num_classes > 0``; ``num_classes`` is the null label),
* a ``[B, S, context_dim]`` token tensor (``context_dim > 0``; cross-attention),
* a ``[B, cond_channels, H, W]`` image concatenated to the input (``cond_channels > 0``),
* or a dict with any of the keys ``label``, ``tokens``, ``image``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.errors import ConfigError, ShapeError
from fastflow.flow.guidance import Cond
from fastflow.models.layers import AttnBlock, GroupNormAct, ResBlock, interval_length, timestep_embedding
from fastflow.utils.schema import MAX_SIZE, build, check_sizes


@dataclass
class UNetConfig:
    """Architecture hyper-parameters; ``config.json`` of every checkpoint is this dataclass."""

    in_channels: int = 3
    resolution: int = 32
    channels: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    attn_head_dim: int = 0  # 0: one head spanning all channels (DDPM++)
    scale_shift: bool = False  # time modulation GN(h)·(1+s)+b instead of an added bias
    skip_rescale: bool = True
    t_scale: float = 999.0
    num_classes: int = 0
    context_dim: int = 0
    cond_channels: int = 0
    out_channels: int = 0  # 0: same as in_channels
    times: int = 1  # 2: u(x, t, t_end), the average velocity over [t, t_end] (MeanFlow)

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        counts = (self.num_classes, self.context_dim, self.cond_channels, self.out_channels, self.attn_head_dim)
        checks = [
            (self.in_channels >= 1 and self.channels >= 4 and self.num_res_blocks >= 1, "in_channels >= 1, "
             "channels >= 4 and num_res_blocks >= 1"),
            (bool(self.ch_mult) and min(self.ch_mult) >= 1, "ch_mult: a non-empty list of positive integers"),
            (self.resolution >= 1 and all(r >= 1 for r in self.attn_resolutions), "resolutions must be >= 1"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.t_scale > 0, f"t_scale must be > 0, got {self.t_scale}"),
            (self.times in (1, 2), f"times must be 1 or 2, got {self.times}"),
            (min(counts) >= 0, "num_classes, context_dim, cond_channels, out_channels, attn_head_dim must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"invalid UNet config: {msg}")
        check_sizes(self, {**dict.fromkeys(("in_channels", "resolution", "channels", "attn_head_dim", "num_classes",
                                             "context_dim", "cond_channels", "out_channels", "attn_resolutions"),
                                            MAX_SIZE), "num_res_blocks": 64, "ch_mult": 64}, "UNet")
        if len(self.ch_mult) > 8:
            raise ConfigError(f"invalid UNet config: at most 8 levels in ch_mult, got {len(self.ch_mult)}")
        head = self.attn_head_dim
        attended = [m for i, m in enumerate(self.ch_mult)
                    if self.resolution // 2 ** i in self.attn_resolutions or i == len(self.ch_mult) - 1]
        if head and any(self.channels * m % head for m in attended):
            widths = sorted({self.channels * m for m in attended})
            raise ConfigError(f"invalid UNet config: attn_head_dim {head} does not divide the attention widths "
                              f"{widths} (channels × ch_mult)")
        if self.resolution % 2 ** (len(self.ch_mult) - 1):
            raise ConfigError(f"resolution {self.resolution} is not divisible by "
                              f"2^{len(self.ch_mult) - 1} (levels in ch_mult)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        return build(cls, d, "model.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d


class UNet(nn.Module):
    """DDPM++ velocity network ``v_θ(x, t, cond)``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        nf, temb_dim = cfg.channels, 4 * cfg.channels
        head = cfg.attn_head_dim or None
        block = dict(temb_dim=temb_dim, dropout=cfg.dropout, scale_shift=cfg.scale_shift,
                     skip_rescale=cfg.skip_rescale)
        attn = dict(context_dim=cfg.context_dim, head_dim=head, skip_rescale=cfg.skip_rescale)

        self.time_mlp = nn.Sequential(nn.Linear(nf, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.interval_mlp = (nn.Sequential(nn.Linear(nf, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
                             if cfg.times == 2 else None)
        self.label_emb = nn.Embedding(cfg.num_classes + 1, temb_dim) if cfg.num_classes else None
        self.null_context = nn.Parameter(torch.zeros(cfg.context_dim)) if cfg.context_dim else None
        self.conv_in = nn.Conv2d(cfg.in_channels + cfg.cond_channels, nf, 3, padding=1)

        self.down = nn.ModuleList()
        skips, ch, res = [nf], nf, cfg.resolution
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(ResBlock(ch, nf * mult, **block))
                ch = nf * mult
                if res in cfg.attn_resolutions:
                    self.down.append(AttnBlock(ch, **attn))
                skips.append(ch)
            if level != len(cfg.ch_mult) - 1:
                self.down.append(ResBlock(ch, ch, resample="down", **block))
                skips.append(ch)
                res //= 2

        self.mid = nn.ModuleList([ResBlock(ch, ch, **block), AttnBlock(ch, **attn),
                                  ResBlock(ch, ch, **block)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), nf * mult, **block))
                ch = nf * mult
            if res in cfg.attn_resolutions:
                self.up.append(AttnBlock(ch, **attn))
            if level != 0:
                self.up.append(ResBlock(ch, ch, resample="up", **block))
                res *= 2

        self.norm_out = GroupNormAct(ch)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels or cfg.in_channels, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The UNet's own initialisation (after its layers' defaults): a zero output convolution, so
        training starts from v = 0, and a zero null text context."""
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        if self.null_context is not None:
            nn.init.zeros_(self.null_context)

    # -- conditioning ---------------------------------------------------------------------
    def _split_cond(self, cond: Cond, batch: int) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        cfg = self.config
        if cond is None:
            parts: dict[str, Tensor] = {}
        elif isinstance(cond, dict):
            unknown = set(cond) - {"label", "tokens", "image"}
            if unknown:
                raise ShapeError(f"unknown condition keys {sorted(unknown)}")
            parts = dict(cond)
        else:
            kinds = [k for k, on in (("label", cfg.num_classes), ("tokens", cfg.context_dim),
                                     ("image", cfg.cond_channels)) if on]
            if len(kinds) != 1:
                raise ShapeError("pass cond as a dict with keys label/tokens/image: this model "
                                 f"takes {kinds or 'no condition'}")
            parts = {kinds[0]: cond}
        label, tokens, image = parts.get("label"), parts.get("tokens"), parts.get("image")
        if label is not None:
            if not cfg.num_classes:
                raise ShapeError("this model is not class-conditional")
            if label.shape != (batch,) or label.dtype not in (torch.int32, torch.int64):
                raise ShapeError(f"labels must be an integer tensor of shape [{batch}], got "
                                 f"{tuple(label.shape)} {label.dtype}")
        if tokens is not None:
            if not cfg.context_dim:
                raise ShapeError("this model takes no token context")
            if tokens.dim() != 3 or tokens.shape[0] != batch or tokens.shape[2] != cfg.context_dim:
                raise ShapeError(f"tokens must be [{batch}, S, {cfg.context_dim}], got {tuple(tokens.shape)}")
        if cfg.cond_channels:
            if image is None:
                raise ShapeError(f"this model needs an image condition with {cfg.cond_channels} channels")
        elif image is not None:
            raise ShapeError("this model takes no image condition")
        return label, tokens, image

    def null_cond(self, cond: Cond) -> Cond:
        """The unconditional counterpart of ``cond`` (same structure; image condition kept)."""
        if cond is None:
            return None
        b = next(iter(cond.values())).shape[0] if isinstance(cond, dict) else cond.shape[0]
        label, tokens, image = self._split_cond(cond, b)
        out: dict[str, Tensor] = {}
        if label is not None:
            out["label"] = torch.full_like(label, self.config.num_classes)
        if tokens is not None:
            out["tokens"] = self.null_context.to(tokens.dtype).expand_as(tokens)
        if image is not None:
            out["image"] = image
        return out if isinstance(cond, dict) else next(iter(out.values()))

    # -- forward --------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, cond: Cond = None, t_end: Tensor | None = None) -> Tensor:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ShapeError(f"x must be [B, {cfg.in_channels}, H, W], got {tuple(x.shape)}")
        div = 2 ** (len(cfg.ch_mult) - 1)
        if x.shape[2] % div or x.shape[3] % div:
            raise ShapeError(f"H and W must be multiples of {div}, got {tuple(x.shape[2:])}")
        b = x.shape[0]
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ShapeError(f"t must be [{b}] (or a scalar), got {tuple(t.shape)}")
        label, tokens, image = self._split_cond(cond, b)
        span = interval_length(t, t_end, cfg.times)

        temb = self.time_mlp(timestep_embedding(t * cfg.t_scale, cfg.channels).to(x.dtype))
        if span is not None:
            temb = temb + self.interval_mlp(timestep_embedding(span * cfg.t_scale, cfg.channels).to(x.dtype))
        if self.label_emb is not None:
            if label is None:
                label = torch.full((b,), cfg.num_classes, dtype=torch.long, device=x.device)
            temb = temb + self.label_emb(label)
        if self.null_context is not None and tokens is None:
            tokens = self.null_context.to(x.dtype).expand(b, 1, -1)
        if image is not None:
            if image.shape != (b, cfg.cond_channels, *x.shape[2:]):
                raise ShapeError(f"image condition must be [{b}, {cfg.cond_channels}, "
                                 f"{x.shape[2]}, {x.shape[3]}], got {tuple(image.shape)}")
            x = torch.cat([x, image.to(x.dtype)], dim=1)

        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            h = m(h, temb) if isinstance(m, ResBlock) else m(h, tokens)
            if isinstance(m, ResBlock):
                hs.append(h)
            else:  # attention follows a res block at the same position: replace its skip
                hs[-1] = h
        for m in self.mid:
            h = m(h, temb) if isinstance(m, ResBlock) else m(h, tokens)
        for m in self.up:
            if isinstance(m, ResBlock):
                if m.resample is None:
                    h = torch.cat([h, hs.pop()], dim=1)
                h = m(h, temb)
            else:
                h = m(h, tokens)
        return self.conv_out(self.norm_out(h))
