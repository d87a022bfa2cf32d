"""The embedded end-to-end demo (``make demo`` / ``fastflow demo``), CPU only: SlimFlow on digits
(:mod:`fastflow.recipes.slimflow`), and optionally InstaFlow on class-conditioned digits
(:mod:`~fastflow.recipes.instaflow`, ``--conditional``), OFTSR ×4 on photographs
(:mod:`~fastflow.recipes.oftsr`, ``--sr``) and MeanFlow at the SlimFlow route's compute
(:mod:`~fastflow.recipes.meanflow`, ``--methods slimflow,meanflow``), each in its own sub-directory.
``--seeds N`` repeats each with seeds 0 … N−1: rows as mean ± sd, checks as seeds holding, orderings as paired gains."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from fastflow.recipes import instaflow, meanflow, oftsr, slimflow
from fastflow.recipes.stages import EAGER, Execution, run_each


def run(out: Path, seeds: Sequence[int], scale: float = 1.0, slimflow_run: bool = True, instaflow_run: bool = False,
        oftsr_run: bool = False, meanflow_run: bool = False, jobs: int = 1, ex: Execution | None = None) -> None:
    """The chosen recipes, once (one seed: 0) or over ``seeds``. MeanFlow runs right after each
    seed's SlimFlow run (its budget is that run's recorded CPU time), so a seed is finished before
    the next starts. ``jobs > 1`` runs that many seeds at once in worker processes. ``ex``: how every
    recipe's stages run (default :meth:`Execution.fastest`)."""
    ex = Execution.fastest() if ex is None else ex
    many = len(seeds) > 1
    if slimflow_run and meanflow_run and many:
        both = run_each(partial(slimflow_then_meanflow, ex=ex), out, seeds, scale, jobs)
        slimflow.run_seeds(out, seeds, scale, runs=[b[0] for b in both])
        meanflow.run_seeds(out, seeds, scale, runs=[b[1] for b in both])
    elif slimflow_run and meanflow_run:
        slimflow_then_meanflow(out, scale, ex=ex)
    for wanted, where, pipeline, kw in ((slimflow_run and not meanflow_run, out, slimflow, {"ex": ex}),
                                        (meanflow_run and not slimflow_run, out, meanflow, {"ex": ex}),
                                        (instaflow_run, out / "conditional", instaflow, {"ex": ex}),
                                        (oftsr_run, out / "sr", oftsr, {"ex": ex})):
        if wanted and many:
            pipeline.run_seeds(where, seeds, scale=scale, jobs=jobs, **kw)
        elif wanted:
            pipeline.run(where, scale=scale, **kw)


def slimflow_then_meanflow(out: Path, scale: float, seed: int = 0,
                           ex: Execution = EAGER) -> tuple[dict[str, Any], dict[str, Any]]:
    """One seed of both one-step routes: SlimFlow, then MeanFlow at its recorded compute."""
    return slimflow.run(out, scale, seed=seed, ex=ex), meanflow.run(out, scale, seed=seed, ex=ex)
