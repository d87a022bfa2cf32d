"""Training objectives, one file each; :func:`build_objective` makes one from its config.

=============  =================================================  ==========================
``name``       what                                               data
=============  =================================================  ==========================
``rf``         1-RF                                               images (``digits`` …)
``reflow``     k-RF / Annealing Reflow (``anneal: linear_K`` …)   pairs
``distill``    one-step (``k: 1``) or k-step distillation         pairs
``fgd``        Flow-Guided Distillation (``teacher: CKPT``,       pairs
               ``cfg_scale: α`` for conditional teachers)
``sr``         OFTSR teacher flow from the degraded image         ``sr``
``oftsr``      OFTSR one-step distillation (``teacher: CKPT``)    ``sr``
=============  =================================================  ==========================
"""

from __future__ import annotations

from typing import Any

import torch

from fastflow.errors import ConfigError
from fastflow.flow.sr import DEFAULT_SIGMA_P
from fastflow.flow.time import build_time_sampler
from fastflow.objectives.annealing import parse_schedule
from fastflow.objectives.base import Objective
from fastflow.objectives.distances import build_distance
from fastflow.objectives.distill import Distill
from fastflow.objectives.fgd import FlowGuidedDistill
from fastflow.objectives.oftsr import OFTSRDistill, SRFlow
from fastflow.objectives.reflow import Reflow
from fastflow.objectives.rf import RectifiedFlow

_OPTIONS = {
    "rf": {"time", "distance", "cond_drop"},
    "reflow": {"time", "distance", "cond_drop", "anneal"},
    "distill": {"distance", "k", "eps"},
    "fgd": {"distance", "eps", "teacher", "lam", "strict", "teacher_weights", "cfg_scale"},
    "sr": {"time", "distance", "sigma_p"},
    "oftsr": {"distance", "teacher", "teacher_weights", "sigma_p", "delta", "t_min", "t_max", "weights"},
}


def build_objective(spec: dict[str, Any], num_classes: int = 0,
                    device: torch.device | str = "cpu") -> Objective:
    """Build an objective from its config section (see the table in the module docstring)."""
    spec = dict(spec)
    name = spec.pop("name", "rf")
    if name not in _OPTIONS:
        raise ConfigError(f"unknown objective {name!r}; choose from {sorted(_OPTIONS)}")
    unknown = set(spec) - _OPTIONS[name]
    if unknown:
        raise ConfigError(f"objective {name} has no option(s) {sorted(unknown)}; "
                          f"it takes {sorted(_OPTIONS[name])}")
    distance = build_distance(spec.get("distance", "l2"))
    if name in ("rf", "reflow"):
        common = dict(time=build_time_sampler(spec.get("time", "uniform")), distance=distance,
                      num_classes=num_classes, cond_drop=float(spec.get("cond_drop", 0.0)))
        if name == "rf":
            return RectifiedFlow(**common)
        return Reflow(**common, beta=parse_schedule(spec.get("anneal", "fixed_0")))
    if name == "sr":
        return SRFlow(time=build_time_sampler(spec.get("time", "uniform")), distance=distance,
                      sigma_p=float(spec.get("sigma_p", DEFAULT_SIGMA_P)))
    eps = float(spec.get("eps", 1e-3))
    if name == "distill":
        return Distill(distance=distance, k=int(spec.get("k", 1)), eps=eps, num_classes=num_classes)
    if "teacher" not in spec:
        raise ConfigError(f"objective {name} needs objective.teacher (a checkpoint or run directory)")
    from fastflow.models.checkpoint import load_model

    teacher = load_model(spec["teacher"], weights=spec.get("teacher_weights", "ema"), device=device)
    teacher.requires_grad_(False)
    if name == "oftsr":
        w = spec.get("weights", (1.0, 0.1, 0.01))
        if not (isinstance(w, (list, tuple)) and len(w) == 3):
            raise ConfigError("objective oftsr weights must be [distill, boundary, align]")
        return OFTSRDistill(teacher=teacher, sigma_p=float(spec.get("sigma_p", DEFAULT_SIGMA_P)), distance=distance,
                            delta=float(spec.get("delta", 0.05)), t_min=float(spec.get("t_min", 0.01)),
                            t_max=float(spec.get("t_max", 0.99)), weights=tuple(float(x) for x in w))
    return FlowGuidedDistill(distance=distance, eps=eps, num_classes=num_classes, teacher=teacher,
                             lam=float(spec.get("lam", 1.0)), strict=bool(spec.get("strict", False)),
                             cfg_scale=float(spec.get("cfg_scale", 1.0)))


__all__ = ["Distill", "FlowGuidedDistill", "OFTSRDistill", "Objective", "RectifiedFlow", "Reflow", "SRFlow",
           "build_objective"]
