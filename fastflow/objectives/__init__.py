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
``meanflow``   MeanFlow, teacher-free one step (``model.times:    images (``digits`` …)
               2``; ``ratio``, ``weight_p``, ``cfg_scale`` …)
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
from fastflow.objectives.distances import build_distance, check_distance
from fastflow.objectives.distill import Distill
from fastflow.objectives.fgd import FlowGuidedDistill
from fastflow.objectives.meanflow import DEFAULT_TIME, MeanFlow
from fastflow.objectives.oftsr import OFTSRDistill, SRFlow
from fastflow.objectives.reflow import Reflow
from fastflow.objectives.rf import RectifiedFlow
from fastflow.utils.schema import coerce

_TIME = str | dict
#: objective name → option → type (checked by :func:`objective_options`)
OPTIONS: dict[str, dict[str, Any]] = {
    "rf": {"time": _TIME, "distance": str, "cond_drop": float},
    "reflow": {"time": _TIME, "distance": str, "cond_drop": float, "anneal": str | float},
    "distill": {"distance": str, "k": int, "eps": float},
    "fgd": {"distance": str, "eps": float, "teacher": str, "lam": float, "strict": bool,
            "teacher_weights": str, "cfg_scale": float},
    "sr": {"time": _TIME, "distance": str, "sigma_p": float},
    "oftsr": {"distance": str, "teacher": str, "teacher_weights": str, "sigma_p": float, "delta": float,
              "t_min": float, "t_max": float, "weights": tuple[float, float, float]},
    "meanflow": {"time": _TIME, "ratio": float, "weight_p": float, "weight_c": float, "cond_drop": float,
                 "cfg_scale": float, "kappa": float, "cfg_interval": tuple[float, float]},
}
#: option → (valid?, what valid means)
_RANGES: dict[str, tuple[Any, str]] = {
    "cond_drop": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "eps": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "k": (lambda v: v >= 1, ">= 1"),
    "lam": (lambda v: v >= 0.0, ">= 0"),
    "cfg_scale": (lambda v: v >= 0.0, ">= 0"),
    "sigma_p": (lambda v: v >= 0.0, ">= 0"),
    "delta": (lambda v: 0.0 < v < 1.0, "in (0, 1)"),
    "t_min": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "t_max": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "teacher_weights": (lambda v: v in ("ema", "model"), "ema or model"),
    "weights": (lambda v: min(v) >= 0.0, "[distill, boundary, align], each >= 0"),
    "ratio": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "weight_p": (lambda v: v >= 0.0, ">= 0"),
    "weight_c": (lambda v: v > 0.0, "> 0"),
    "kappa": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "cfg_interval": (lambda v: 0.0 <= v[0] <= v[1] <= 1.0, "[lo, hi] with 0 <= lo <= hi <= 1"),
}


def objective_options(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of an objective config, every option type- and range-checked, the
    time sampler, annealing schedule and distance name validated; nothing is loaded."""
    spec = dict(spec)
    name = spec.pop("name", "rf")
    if not isinstance(name, str) or name not in OPTIONS:
        raise ConfigError(f"unknown objective {name!r}; choose from {sorted(OPTIONS)}")
    unknown = set(spec) - set(OPTIONS[name])
    if unknown:
        raise ConfigError(f"objective {name} has no option(s) {sorted(unknown)}; "
                          f"it takes {sorted(OPTIONS[name])}")
    opts = {k: coerce(v, OPTIONS[name][k], f"objective.{k}") for k, v in spec.items()}
    for k, v in opts.items():
        ok, valid = _RANGES.get(k, (lambda _: True, ""))
        if not ok(v):
            raise ConfigError(f"objective.{k} must be {valid}, got {v!r}")
    if name in ("fgd", "oftsr") and "teacher" not in opts:
        raise ConfigError(f"objective {name} needs objective.teacher (a checkpoint or run directory)")
    if name == "oftsr" and opts.get("t_min", 0.01) >= opts.get("t_max", 0.99):
        raise ConfigError("objective.t_min must be below objective.t_max")
    check_distance(opts.get("distance", "l2"))
    if "time" in opts:
        opts["time"] = build_time_sampler(opts["time"])
    if "anneal" in opts:
        opts["anneal"] = parse_schedule(opts["anneal"])
    return name, opts


def build_objective(spec: dict[str, Any], num_classes: int = 0,
                    device: torch.device | str = "cpu") -> Objective:
    """Build an objective from its config section (see the table in the module docstring)."""
    name, o = objective_options(spec)
    distance = build_distance(o.get("distance", "l2"))
    if name in ("rf", "reflow"):
        common = dict(time=o.get("time", build_time_sampler("uniform")), distance=distance,
                      num_classes=num_classes, cond_drop=o.get("cond_drop", 0.0))
        if name == "rf":
            return RectifiedFlow(**common)
        return Reflow(**common, beta=o.get("anneal", parse_schedule("fixed_0")))
    if name == "meanflow":
        return MeanFlow(time=o.get("time", DEFAULT_TIME), ratio=o.get("ratio", 0.25), weight_p=o.get("weight_p", 1.0),
                        weight_c=o.get("weight_c", 1e-3), num_classes=num_classes, cond_drop=o.get("cond_drop", 0.0),
                        cfg_scale=o.get("cfg_scale", 1.0), kappa=o.get("kappa", 0.0),
                        cfg_interval=o.get("cfg_interval", (0.0, 1.0)))
    if name == "sr":
        return SRFlow(time=o.get("time", build_time_sampler("uniform")), distance=distance,
                      sigma_p=o.get("sigma_p", DEFAULT_SIGMA_P))
    eps = o.get("eps", 1e-3)
    if name == "distill":
        return Distill(distance=distance, k=o.get("k", 1), eps=eps, num_classes=num_classes)
    from fastflow.models.checkpoint import load_model

    teacher = load_model(o["teacher"], weights=o.get("teacher_weights", "ema"), device=device)
    teacher.requires_grad_(False)
    if name == "oftsr":
        return OFTSRDistill(teacher=teacher, sigma_p=o.get("sigma_p", DEFAULT_SIGMA_P), distance=distance,
                            delta=o.get("delta", 0.05), t_min=o.get("t_min", 0.01), t_max=o.get("t_max", 0.99),
                            weights=o.get("weights", (1.0, 0.1, 0.01)))
    return FlowGuidedDistill(distance=distance, eps=eps, num_classes=num_classes, teacher=teacher,
                             lam=o.get("lam", 1.0), strict=o.get("strict", False),
                             cfg_scale=o.get("cfg_scale", 1.0))


__all__ = ["Distill", "FlowGuidedDistill", "MeanFlow", "OFTSRDistill", "Objective", "RectifiedFlow", "Reflow", "SRFlow",
           "build_objective", "objective_options"]
