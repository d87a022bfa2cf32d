"""Scoring on the embedded digits, shared by the SlimFlow and InstaFlow recipes: one
:class:`~fastflow.recipes.report.ResultRow` per model × solver (digits FD, class coverage,
label accuracy for conditional models, batch-1 latency, parameters)."""

from __future__ import annotations

import torch
from torch import nn

from fastflow.flow import generate
from fastflow.flow.solvers import options_for
from fastflow.metrics import digits_scores
from fastflow.metrics.cost import count_params
from fastflow.metrics.digits import classify
from fastflow.recipes.report import ResultRow
from fastflow.recipes.stages import DIGITS_SHAPE, log
from fastflow.utils.timing import measure_latency

#: samples per scored row
N_EVAL = 1000


def eval_noise(seed: int, n: int | None = None) -> torch.Tensor:
    """The scoring noise of run ``seed`` (the same for every row of the run)."""
    return torch.randn(n or N_EVAL, *DIGITS_SHAPE, generator=torch.Generator().manual_seed(2024 + seed))


def score(method: str, model: nn.Module, z: torch.Tensor, solver: str, steps: int | None,
          labels: torch.Tensor | None = None, cfg: float = 1.0,
          rk45_tol: float = 1e-3) -> tuple[ResultRow, torch.Tensor]:
    """Sample ``model`` from ``z`` with ``solver`` (``labels``: a class-conditional model at CFG
    scale ``cfg``) and score the samples; the row and the samples."""
    kw = options_for(solver, rtol=rk45_tol, atol=rk45_tol)
    res = generate(model, z, solver, steps, cond=labels, cfg_scale=cfg, **kw)
    nfe = float(res.per_sample_nfe().mean())
    z1, c1 = z[:1], None if labels is None else labels[:1]
    lat = measure_latency(lambda: generate(model, z1, solver, steps, cond=c1, cfg_scale=cfg, **kw), warmup=2,
                          iters=5 if solver == "rk45" else 20)
    scores = digits_scores(res.x)
    row = ResultRow(method, f"{solver} {steps}" if steps else solver, round(nfe, 1),
                    {"fd": scores["fd"], "coverage": scores["coverage"]}, lat.p50_ms, count_params(model))
    extra = ""
    if labels is not None:
        row.cfg = cfg
        row.metrics["label_accuracy"] = float((classify(res.x) == labels).float().mean())
        extra = f"  α {cfg:.1f}  accuracy {row.metrics['label_accuracy']:.3f}"
    log(f"  {method:28s} {row.solver:9s} NFE {nfe:6.1f}  FD {scores['fd']:8.2f}  "
        f"coverage {scores['coverage']:.3f}  {lat.p50_ms:.2f} ms{extra}")
    return row, res.x
