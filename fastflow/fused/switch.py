"""``apply(model, mode)``: the one switch that puts the fused kernels into a model — what
``model.fused`` (training) and ``--fused`` (sample, eval, pairs, sr, export, bench) call on every
model they get, fastflow UNets and diffusers UNets alike.

Modes: ``off`` leaves the model as it is; ``on`` swaps the fused modules in (:func:`swap`) and is
an error where the kernels cannot run; ``auto`` is ``on`` where they run as compiled GPU code
(CUDA with Triton) and ``off`` elsewhere. The Triton interpreter (``TRITON_INTERPRET=1``, tests)
counts as a kernel device for ``on`` only: ``auto`` never picks the interpreter. The decision is
printed once per process as one line (what and why), and what was swapped as counts by kind.
Swapping keeps every parameter and state-dict key, so a checkpoint trained fused loads unfused and
the reverse.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastflow.errors import ConfigError, MissingBackendError
from fastflow.fused.modules import FusedAttention, FusedAttnProcessor, FusedGroupNorm
from fastflow.fused.runtime import TRITON, interpreting
from fastflow.fused.swap import SwapReport, swap

MODES = ("auto", "on", "off")
_said: set[str] = set()


@dataclass(frozen=True)
class FusedDecision:
    """What :func:`apply` did: ``active`` (kernels swapped in), the mode asked and the reason."""

    mode: str
    active: bool
    reason: str
    report: SwapReport | None = None

    def line(self) -> str:
        state = "on" if self.active else "off"
        return f"fused kernels {state} (fused={self.mode}: {self.reason})"


def check_mode(mode: object, key: str = "fused") -> str:
    """``mode`` as one of :data:`MODES` (YAML 1.1 reads an unquoted ``on``/``off`` as a boolean:
    taken as ``on``/``off``), else :class:`ConfigError` naming ``key``."""
    if isinstance(mode, bool):
        return "on" if mode else "off"
    if mode not in MODES:
        raise ConfigError(f"{key} must be one of {', '.join(MODES)}, got {mode!r}")
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


def decide(mode: str, device: torch.device | str) -> tuple[bool, str]:
    """``(active, reason)`` for ``mode`` on ``device``; ``on`` without a kernel device raises
    :class:`MissingBackendError` (one line)."""
    compiled, interpreted, why = kernel_runtime(device)
    if check_mode(mode) == "off":
        return False, "asked for off"
    if mode == "on":
        if not (compiled or interpreted):
            raise MissingBackendError(f"fused=on: {why}; use fused=auto or fused=off")
        return True, why
    return compiled, f"{why}; auto does not pick the interpreter, fused=on does" if interpreted else why


def _summary(report: SwapReport) -> str:
    kinds = Counter(f"{was} -> {now}" for _, was, now in report.swapped)
    left = Counter(f"{kind} ({why})" for _, kind, why in report.left)
    text = "; ".join(f"{n}× {k}" for k, n in sorted(kinds.items())) or "nothing to swap"
    return text + ("; left " + "; ".join(f"{n}× {k}" for k, n in sorted(left.items())) if left else "")


def _say(text: str) -> None:
    if text not in _said:
        _said.add(text)
        print(text, file=sys.stderr)


def apply(model: nn.Module, mode: str = "auto", device: torch.device | str | None = None) -> FusedDecision:
    """Apply ``mode`` to ``model`` in place (``device``: where it runs; default its parameters').
    Returns the :class:`FusedDecision`; prints it and the swap counts once per process."""
    active, reason = decide(mode, _model_device(model) if device is None else device)
    decision = FusedDecision(mode, active, reason, swap(model) if active else None)
    _say(decision.line())
    if decision.report is not None:
        _say(f"fused: swapped {_summary(decision.report)}")
    return decision


def is_fused(model: nn.Module) -> bool:
    """Whether any fused module (or diffusers processor) is in ``model``."""
    return any(isinstance(m, (FusedGroupNorm, FusedAttention)) or
               isinstance(getattr(m, "processor", None), FusedAttnProcessor) for m in model.modules())


def split_spec(spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A ``model`` config section → (the architecture spec without ``fused``, the checked mode;
    ``auto`` when absent). ``fused`` is how a run executes, not what it builds."""
    spec = dict(spec)
    return spec, check_mode(spec.pop("fused", "auto"), "model.fused")
