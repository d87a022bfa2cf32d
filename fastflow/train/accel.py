"""How a training run executes, apart from what it computes: ``train.compile`` and ``train.amp``.

``train.compile`` (:data:`COMPILE_MODES`): ``off`` runs eager; ``model`` compiles the network the
objective calls (``torch.compile`` with Inductor); ``step`` compiles the whole forward and loss (the
objective's call, frozen networks included). Both keep the module tree, so state dicts, checkpoints
and resume are those of an eager run. Random draws inside a compiled region come from PyTorch's
generator as in eager (Inductor's ``fallback_random``), so a compiled step draws the noise an eager
step draws. Recompilations are bounded by Dynamo's ``recompile_limit`` (past it a frame runs eager,
with Dynamo's warning) and counted in the log (``compiled_graphs``, :func:`compiled_graphs`).

``train.amp`` (:data:`AMP_MODES`): ``bf16`` autocasts the forward and loss to bfloat16, parameters,
gradients and Adam states staying float32; on a CPU only where it executes bf16 natively
(AVX512-BF16 or AMX: :func:`cpu_bf16`), elsewhere refused (PyTorch would emulate it, slower than
float32). ``auto`` is bf16 on CUDA where supported and float32 on CPUs: the measurement behind that is
in ``docs/training.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from fastflow.errors import ConfigError

COMPILE_MODES = ("off", "model", "step")
AMP_MODES = ("auto", "bf16", "none")
#: Inductor options of every training compile: random ops draw from PyTorch's generator, as in eager
INDUCTOR_OPTIONS = {"fallback_random": True}


def cpu_bf16() -> tuple[bool, str]:
    """``(native, what)``: whether this CPU executes bfloat16 arithmetic natively, and the ISA in words."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    avx512 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    if amx or avx512:
        return True, "AMX" if amx else "AVX512-BF16"
    return False, "neither AVX512-BF16 nor AMX"


def resolve_amp(mode: str, device: torch.device) -> str:
    """``bf16`` or ``none`` for ``train.amp=mode`` on ``device``; :class:`ConfigError` for bf16 where it
    would be emulated (a CPU without AVX512-BF16/AMX, a GPU without bf16)."""
    if mode not in AMP_MODES:
        raise ConfigError(f"train.amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if mode == "auto":
        return "bf16" if cuda_bf16 else "none"
    if mode == "bf16" and device.type == "cpu":
        native, what = cpu_bf16()
        if not native:
            raise ConfigError(f"train.amp=bf16: this CPU has {what}, so PyTorch would emulate bf16 (slower than "
                              "float32); use train.amp=none")
    elif mode == "bf16" and device.type == "cuda" and not cuda_bf16:
        raise ConfigError("train.amp=bf16: this GPU has no bf16 support; use train.amp=none")
    return mode


def autocast_for(mode: str, device: torch.device) -> AbstractContextManager[Any]:
    """The autocast context of ``train.amp=mode`` on ``device`` (see :func:`resolve_amp`)."""
    if resolve_amp(mode, device) == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def compile_mode(value: object, key: str = "train.compile") -> str:
    """``train.compile`` as a word (YAML 1.1 reads an unquoted ``off`` as false); ``on``/true names no
    mode. :class:`ConfigError` naming ``key`` otherwise."""
    if value is False:
        return "off"
    if value is True or value == "on":
        raise ConfigError(f"{key}=on: say which, model (the network) or step (forward + loss)")
    if value not in COMPILE_MODES:
        raise ConfigError(f"{key} must be one of {', '.join(COMPILE_MODES)}, got {value!r}")
    return str(value)


def check_compile(mode: str, parallel: str, not_compilable: str = "") -> None:
    """:class:`ConfigError` for a ``train.compile`` mode this run cannot take: an unknown word, FSDP2,
    or an objective that says why it does not compile (``not_compilable``)."""
    mode = compile_mode(mode)
    if mode != "off" and parallel == "fsdp2":
        raise ConfigError(f"train.compile={mode} with train.parallel=fsdp2 is not supported; use train.compile=off "
                          "or train.parallel=ddp")
    if mode != "off" and not_compilable:
        raise ConfigError(f"train.compile={mode}: {not_compilable}; use train.compile=off")


Call = Callable[[nn.Module, Any, int], Any]


def compiled(mode: str, net: nn.Module, call: Call) -> tuple[nn.Module, Call]:
    """``(net, call)`` for ``train.compile=mode``: ``model`` wraps ``net`` (what the objective calls);
    ``step`` compiles ``call(net, batch, step)``, the forward and loss. The wrapped module shares
    ``net``'s parameters: optimiser, EMA and checkpoints keep using the original."""
    if mode == "model":
        return torch.compile(net, options=INDUCTOR_OPTIONS), call
    if mode == "step":
        return net, torch.compile(call, options=INDUCTOR_OPTIONS)
    return net, call


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far (recompilations included)."""
    from torch._dynamo.utils import counters  # Dynamo's import is heavy: only for compiled runs

    return int(counters["stats"].get("unique_graphs", 0))
