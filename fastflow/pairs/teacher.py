"""Teachers: deterministic noise → data maps whose pairs ``(z, T(z))`` feed reflow and distillation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.flow.guidance import Cond
from fastflow.flow.sample import generate
from fastflow.flow.solvers import options_for
from fastflow.models.checkpoint import load_model, read_config, resolve_checkpoint, weights_source


@dataclass
class FlowTeacher:
    """A velocity model integrated by an ODE solver: ``T(z) = solve(v, z)``.

    Defaults follow the papers: adaptive RK45 with ``rtol = atol = 1e-5``.
    """

    model: nn.Module
    solver: str = "rk45"
    steps: int | None = None
    rtol: float = 1e-5
    atol: float = 1e-5
    cfg_scale: float = 1.0
    source: dict[str, Any] = field(default_factory=dict)
    #: hears RK45's progress within a batch, ``(nfe, samples still integrating)`` (e.g. ``cli.common.rk45_bar``)
    progress: Callable[[int, int], None] | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        weights: str = "ema", **kwargs: Any) -> FlowTeacher:
        p = resolve_checkpoint(path)
        model = load_model(p, weights=weights, device=device)
        name, sha = weights_source(p, weights)
        source = {"checkpoint": str(p.resolve()), "weights": name, "sha256": sha, "model": read_config(p)["model"]}
        return cls(model=model, source=source, **kwargs)

    @property
    def num_classes(self) -> int:
        return getattr(self.model.config, "num_classes", 0)

    def identity(self) -> dict[str, Any]:
        kw = options_for(self.solver, rtol=self.rtol, atol=self.atol) or {"steps": self.steps}
        return {"kind": "flow", **self.source, "solver": self.solver, **kw, "cfg_scale": self.cfg_scale}

    @torch.no_grad()
    def __call__(self, z: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        """``(x, per-sample NFE)`` for noise ``z``."""
        kw = options_for(self.solver, rtol=self.rtol, atol=self.atol, progress=self.progress)
        res = generate(self.model, z, self.solver, self.steps, cond=cond, cfg_scale=self.cfg_scale, **kw)
        return res.x, res.per_sample_nfe()


@dataclass
class CallableTeacher:
    """Any deterministic ``fn(z, cond) → x`` (e.g. a diffusers pipeline's ODE sampler)."""

    fn: Callable[[Tensor, Cond], Tensor]
    name: str
    num_classes: int = 0

    def identity(self) -> dict[str, Any]:
        return {"kind": "callable", "name": self.name}

    @torch.no_grad()
    def __call__(self, z: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        return self.fn(z, cond), torch.ones(len(z))
