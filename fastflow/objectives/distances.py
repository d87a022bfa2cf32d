r"""Per-sample distances ``d(a, b) → [B]`` used by every objective.

* ``l2``: :math:`\mathrm{mean}((a-b)^2)` over non-batch dims (the papers' MSE).
* ``l1``: :math:`\mathrm{mean}|a-b|`.
* ``pseudo_huber``: :math:`\sqrt{\lVert a-b\rVert_2^2 + c^2} - c` with ``c = 0.03`` (iCT/SlimFlow's
  value for CIFAR-sized images).
* ``lpips``: learned perceptual distance, backbone from local disk (``lpips_distance.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from fastflow.errors import ConfigError
from fastflow.objectives.lpips_distance import LPIPSDistance
from fastflow.objectives.options import option

Distance = Callable[[Tensor, Tensor], Tensor]


def l2(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).float().pow(2).flatten(1).mean(1)


def l1(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).float().abs().flatten(1).mean(1)


def pseudo_huber(a: Tensor, b: Tensor, c: float = 0.03) -> Tensor:
    return ((a - b).float().pow(2).flatten(1).sum(1) + c * c).sqrt() - c


DISTANCES: dict[str, Distance] = {"l2": l2, "l1": l1, "pseudo_huber": pseudo_huber}


LPIPS_NAMES = ("lpips", "lpips_vgg", "lpips_alex")


def check_distance(name: str) -> None:
    """Raise ConfigError unless ``name`` is a distance :func:`build_distance` knows."""
    if name not in DISTANCES and name not in LPIPS_NAMES:
        raise ConfigError(f"unknown distance {name!r}; choose from {sorted(DISTANCES) + ['lpips', 'lpips_alex']}")


def build_distance(name: str) -> Distance:
    """``l2``, ``l1``, ``pseudo_huber`` or ``lpips`` (``lpips_alex`` for the AlexNet backbone)."""
    check_distance(name)
    if name in LPIPS_NAMES:
        return LPIPSDistance(net="alex" if name == "lpips_alex" else "vgg")
    return DISTANCES[name]


def distance_option(default: Distance = l2) -> Any:
    """The ``distance`` option of an objective: a name in the config, the function on the objective."""
    return option(default, type=str, valid=lambda name: check_distance(name) is None, build=build_distance)
