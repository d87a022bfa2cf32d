"""``swap(model)``: put the fused modules into a model in place and report what changed.

Replaced: fastflow's ``GroupNormAct`` (GroupNorm + scale-shift + SiLU) and the attention core of
its ``Attention``; ``nn.GroupNorm`` followed by ``nn.SiLU`` inside an ``nn.Sequential`` (fused,
the SiLU becomes ``nn.Identity``); any other ``nn.GroupNorm``; diffusers ``Attention`` layers
through their processor (``set_processor``) when they use the standard SDPA processor.
Everything else that looks like a norm or attention is listed under ``left`` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import TypeVar

from torch import nn

from fastflow.fused.modules import FusedAttention, FusedAttnProcessor, FusedGroupNorm
from fastflow.models.layers import Attention, GroupNormAct

M = TypeVar("M", bound=nn.Module)


@dataclass
class SwapReport:
    swapped: list[tuple[str, str, str]] = field(default_factory=list)  # (name, was, now)
    left: list[tuple[str, str, str]] = field(default_factory=list)  # (name, type, why)

    def __str__(self) -> str:
        lines = [f"swapped {len(self.swapped)} module(s), left {len(self.left)}"]
        lines += [f"  swapped {n or '<root>'}: {was} -> {now}" for n, was, now in self.swapped]
        lines += [f"  left    {n or '<root>'}: {t} ({why})" for n, t, why in self.left]
        return "\n".join(lines)


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` inside ``model``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def share_as(cls: type[M], module: nn.Module) -> M:
    """An instance of ``cls`` (a subclass of ``module``'s class that adds no state) sharing ``module``'s
    parameters, buffers and submodules: nothing is copied and the state-dict keys are unchanged."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    return new


def _is_diffusers_attention(m: nn.Module) -> bool:
    cls = type(m)
    return cls.__name__ == "Attention" and cls.__module__.startswith("diffusers") and hasattr(m, "set_processor")


def swap(model: nn.Module, groupnorm: bool = True, attention: bool = True) -> SwapReport:
    """Swap in place; returns the :class:`SwapReport`. Parameters are shared, not copied."""
    report = SwapReport()
    replace: list[tuple[str, nn.Module, str]] = []
    fused_silu: set[str] = set()
    for name, m in model.named_modules():
        if groupnorm and isinstance(m, nn.Sequential):
            kids = list(m.named_children())
            for (a, ma), (b, mb) in pairwise(kids):
                if isinstance(ma, nn.GroupNorm) and isinstance(mb, nn.SiLU):
                    pre = f"{name}." if name else ""
                    fused_silu.add(pre + a)
                    replace.append((pre + b, nn.Identity(),
                                    "nn.SiLU -> nn.Identity (fused into the GroupNorm before it)"))
    for name, m in model.named_modules():
        if isinstance(m, GroupNormAct):
            if groupnorm:
                replace.append((name, FusedGroupNorm.from_module(m), f"GroupNormAct -> FusedGroupNorm(silu={m.act})"))
            else:
                report.left.append((name, "GroupNormAct", "groupnorm=False"))
        elif isinstance(m, nn.GroupNorm):
            if groupnorm:
                silu = name in fused_silu
                replace.append((name, FusedGroupNorm.from_module(m, silu=silu),
                                f"nn.GroupNorm -> FusedGroupNorm(silu={silu})"))
            else:
                report.left.append((name, "nn.GroupNorm", "groupnorm=False"))
        elif isinstance(m, Attention):
            if attention:
                replace.append((f"{name}.core" if name else "core", FusedAttention(), "SDPA core -> FusedAttention"))
            else:
                report.left.append((name, "Attention", "attention=False"))
        elif _is_diffusers_attention(m):
            proc = type(m.processor).__name__
            if not attention:
                report.left.append((name, "diffusers Attention", "attention=False"))
            elif proc in ("AttnProcessor2_0", "AttnProcessor", "FusedAttnProcessor"):
                m.set_processor(FusedAttnProcessor())
                report.swapped.append((name, f"diffusers Attention ({proc})", "FusedAttnProcessor"))
            else:
                report.left.append((name, "diffusers Attention", f"processor {proc} is not the standard one"))
        elif isinstance(m, nn.MultiheadAttention):
            report.left.append((name, "nn.MultiheadAttention", "not a supported attention layout"))
    for name, new, what in replace:
        was, _, now = what.partition(" -> ")
        replace_module(model, name, new)
        report.swapped.append((name, was, now))
    return report
