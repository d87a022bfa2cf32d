"""``apply(model, mode)``: the one switch that puts fastflow's kernels into a model — what
``model.fused`` (training) and ``--fused`` (sample, eval, sr, pairs, export, bench) call on every
model they get, fastflow UNets and diffusers UNets alike.

Modes (:data:`MODES`): ``off`` leaves the model as it is; ``triton`` swaps the Triton-fused
GroupNorm/attention modules in (:func:`swap`; ``on`` is an alias) and is an error where they cannot
run; ``cpu`` swaps the CPU block kernel into every fastflow UNet (:mod:`fastflow.fused.cpu_block`;
inference only, so training refuses it); ``auto`` picks one of those from the measured winners table
(:mod:`fastflow.fused.auto`) for the device kind and the model's size class. The Triton interpreter
(``TRITON_INTERPRET=1``, tests) counts as a kernel device for ``triton`` only: ``auto`` never picks
the interpreter. The decision is printed once per process as one line (which path and why), and
what was swapped as counts by kind. Swapping keeps every parameter and state-dict key, so a
checkpoint trained fused loads unfused and the reverse.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastflow.errors import ConfigError, MissingBackendError
from fastflow.fused.auto import auto_path
from fastflow.fused.cpu_block import CpuConv3x3, CpuResBlock, has_unet, swap_cpu_blocks
from fastflow.fused.modules import FusedAttention, FusedAttnProcessor, FusedGroupNorm
from fastflow.fused.runtime import TRITON, interpreting
from fastflow.fused.swap import SwapReport, swap

log = logging.getLogger(__name__)

MODES = ("auto", "off", "triton", "cpu")
ALIASES = {"on": "triton"}  # the older spelling of triton
_said: set[str] = set()


@dataclass(frozen=True)
class FusedDecision:
    """What :func:`apply` did: the mode asked, the ``path`` taken (``off``, ``triton`` or ``cpu``),
    why, and what was swapped."""

    mode: str
    path: str
    reason: str
    report: SwapReport | None = None

    @property
    def active(self) -> bool:
        """Whether kernels were swapped in."""
        return self.path != "off"

    def line(self) -> str:
        return f"fused kernels: {self.path} (fused={self.mode}: {self.reason})"


def check_mode(mode: object, key: str = "fused") -> str:
    """``mode`` as one of :data:`MODES` (``on`` is ``triton``; YAML 1.1 reads an unquoted
    ``on``/``off`` as a boolean: taken as ``triton``/``off``), else :class:`ConfigError` naming ``key``."""
    if isinstance(mode, bool):
        return "triton" if mode else "off"
    mode = ALIASES.get(mode, mode) if isinstance(mode, str) else mode
    if mode not in MODES:
        raise ConfigError(f"{key} must be one of {', '.join(MODES)} (on = triton), got {mode!r}")
    return str(mode)


def kernel_runtime(device: torch.device | str) -> tuple[bool, bool, str]:
    """``(compiled, interpreted, why)``: whether the kernels run on ``device`` as GPU code or under
    the interpreter, with the reason in words."""
    device = torch.device(device)
    if not TRITON:
        return False, False, "Triton is not installed (pip install triton)"
    if device.type == "cuda":
        return True, False, "CUDA with Triton"
    if device.type == "cpu" and interpreting():
        return False, True, "TRITON_INTERPRET=1 runs the kernels on the CPU through the interpreter"
    return False, False, f"the kernels run on CUDA, this model is on {device.type}"


def runnable(names: Sequence[str], device: torch.device | str,
             needs_kernels: Callable[[str], bool]) -> tuple[list[str], str | None]:
    """The ``names`` (benchmark backends, training paths) that run on ``device``: those for which
    ``needs_kernels(name)`` holds are dropped where the kernels cannot run; returns the kept names
    and, when some were dropped, why."""
    compiled, interpreted, why = kernel_runtime(device)
    if compiled or interpreted:
        return list(names), None
    kept = [n for n in names if not needs_kernels(n)]
    return kept, why if len(kept) < len(names) else None


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def decide(mode: str, device: torch.device | str, params: int = 0, inference: bool = True) -> tuple[str, str]:
    """``(path, reason)`` for ``mode`` on ``device`` for a model of ``params`` parameters;
    ``inference=False`` (training) refuses ``cpu`` and keeps ``auto`` off it. ``triton`` without a
    kernel device raises :class:`MissingBackendError`, ``cpu`` off the CPU or in training
    :class:`ConfigError` (one line each)."""
    mode, device = check_mode(mode), torch.device(device)
    compiled, interpreted, why = kernel_runtime(device)
    if mode == "off":
        return "off", "asked for off"
    if mode == "triton":
        if not (compiled or interpreted):
            raise MissingBackendError(f"fused=triton: {why}; use fused=auto or fused=off")
        return "triton", why
    if mode == "cpu":
        if not inference:
            raise ConfigError("fused=cpu: the CPU block kernel is inference-only (no autograd); train with "
                              "fused=auto, off or triton")
        if device.type != "cpu":
            raise ConfigError(f"fused=cpu: the CPU block kernel runs on the CPU, this model is on {device.type}")
        return "cpu", "asked for the CPU block kernel"
    return auto_path(device.type, params, inference, compiled, why)


def _summary(report: SwapReport) -> str:
    kinds = Counter(f"{was} -> {now}" for _, was, now in report.swapped)
    left = Counter(f"{kind} ({why})" for _, kind, why in report.left)
    text = "; ".join(f"{n}× {k}" for k, n in sorted(kinds.items())) or "nothing to swap"
    return text + ("; left " + "; ".join(f"{n}× {k}" for k, n in sorted(left.items())) if left else "")


def _say(text: str) -> None:
    if text not in _said:
        _said.add(text)
        log.info(text)


def apply(model: nn.Module, mode: str = "auto", device: torch.device | str | None = None,
          inference: bool = True, params: int | None = None) -> FusedDecision:
    """Apply ``mode`` to ``model`` in place (``device``: where it runs, default its parameters';
    ``inference=False`` for a model being trained; ``params``: the size ``auto`` classifies, default
    the model's). Returns the :class:`FusedDecision`; prints it and the swap counts once per process."""
    size = sum(p.numel() for p in model.parameters()) if params is None else params
    mode = check_mode(mode)
    path, reason = decide(mode, _model_device(model) if device is None else device, size, inference)
    if path == "cpu" and not has_unet(model):
        if mode == "cpu":
            raise ConfigError("fused=cpu: this model has no fastflow UNet blocks to put the CPU block kernel into; "
                              "use fused=off")
        path, reason = "off", f"{reason}; but this model has no fastflow UNet blocks"
    report = swap(model) if path == "triton" else None
    if path == "cpu":
        try:
            report = swap_cpu_blocks(model)  # builds the kernel on first use
        except MissingBackendError as e:
            if mode == "cpu":
                raise
            path, reason = "off", f"{reason}; but {e}"
    decision = FusedDecision(mode, path, reason, report)
    _say(decision.line())
    if decision.report is not None:
        _say(f"fused: swapped {_summary(decision.report)}")
    return decision


def is_swapped(model: nn.Module) -> bool:
    """Whether :func:`apply` put any kernels into ``model`` (Triton modules or the CPU block kernel)."""
    return is_fused(model) or any(isinstance(m, (CpuResBlock, CpuConv3x3)) for m in model.modules())


def is_fused(model: nn.Module) -> bool:
    """Whether any fused module (or diffusers processor) is in ``model``."""
    return any(isinstance(m, (FusedGroupNorm, FusedAttention)) or
               isinstance(getattr(m, "processor", None), FusedAttnProcessor) for m in model.modules())


def split_spec(spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A ``model`` config section → (the architecture spec without ``fused``, the checked mode;
    ``auto`` when absent). ``fused`` is how a run executes, not what it builds."""
    spec = dict(spec)
    return spec, check_mode(spec.pop("fused", "auto"), "model.fused")
