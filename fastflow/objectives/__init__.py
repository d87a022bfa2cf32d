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
from fastflow.models.checkpoint import load_model
from fastflow.objectives.base import Objective
from fastflow.objectives.distill import Distill
from fastflow.objectives.fgd import FlowGuidedDistill
from fastflow.objectives.meanflow import MeanFlow
from fastflow.objectives.oftsr import OFTSRDistill, SRFlow
from fastflow.objectives.options import field_values, options_of, read_options
from fastflow.objectives.reflow import Reflow
from fastflow.objectives.rf import RectifiedFlow

#: objective name → its class (whose :func:`~fastflow.objectives.options.option` fields are its config keys)
OBJECTIVES: dict[str, type] = {"rf": RectifiedFlow, "reflow": Reflow, "distill": Distill, "fgd": FlowGuidedDistill,
                               "sr": SRFlow, "oftsr": OFTSRDistill, "meanflow": MeanFlow}
#: objective name → config key → the type the config gives (docs, fuzzing)
OPTIONS: dict[str, dict[str, Any]] = {name: {k: tp for k, (_, _, tp) in options_of(cls).items()}
                                      for name, cls in OBJECTIVES.items()}


def objective_options(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of an objective config, every option type- and range-checked (time
    sampler, annealing schedule and distance name included); nothing is loaded or built."""
    spec = dict(spec)
    name = spec.pop("name", "rf")
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}")
    return name, read_options(OBJECTIVES[name], name, spec)


def build_objective(spec: dict[str, Any], num_classes: int = 0,
                    device: torch.device | str = "cpu") -> Objective:
    """Build an objective from its config section (see the table in the module docstring); a
    ``teacher`` is loaded from its checkpoint, frozen, onto ``device``."""
    name, values = objective_options(spec)
    cls = OBJECTIVES[name]
    kwargs = field_values(cls, values)
    if "teacher" in kwargs:
        kwargs["teacher"] = load_model(kwargs["teacher"], weights=kwargs.get("teacher_weights", "ema"),
                                       device=device).requires_grad_(False)
    if "num_classes" in cls.__dataclass_fields__:
        kwargs["num_classes"] = num_classes
    return cls(**kwargs)


__all__ = ["OBJECTIVES", "OPTIONS", "Distill", "FlowGuidedDistill", "MeanFlow", "OFTSRDistill", "Objective",
           "RectifiedFlow", "Reflow", "SRFlow", "build_objective", "objective_options"]
