"""Training objectives, one file each; :func:`build_objective` makes one from its config."""

from __future__ import annotations

from typing import Any

from fastflow.errors import ConfigError
from fastflow.flow.time import build_time_sampler
from fastflow.objectives.base import Objective
from fastflow.objectives.distances import build_distance
from fastflow.objectives.rf import RectifiedFlow


def build_objective(spec: dict[str, Any], num_classes: int = 0) -> Objective:
    """``{"name": "rf", "time": "uniform", "distance": "l2", "cond_drop": 0.1}`` → objective."""
    spec = dict(spec)
    name = spec.pop("name", "rf")
    if name == "rf":
        allowed = {"time", "distance", "cond_drop"}
        if set(spec) - allowed:
            raise ConfigError(f"objective rf has no option(s) {sorted(set(spec) - allowed)}")
        return RectifiedFlow(time=build_time_sampler(spec.get("time", "uniform")),
                             distance=build_distance(spec.get("distance", "l2")),
                             num_classes=num_classes, cond_drop=float(spec.get("cond_drop", 0.0)))
    raise ConfigError(f"unknown objective {name!r}; choose from ['rf']")


__all__ = ["Objective", "RectifiedFlow", "build_objective"]
