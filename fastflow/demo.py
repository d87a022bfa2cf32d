"""The embedded end-to-end demo (``make demo`` / ``fastflow demo``), CPU only: SlimFlow on digits
(:mod:`fastflow.pipelines.slimflow`), and optionally InstaFlow on class-conditioned digits
(:mod:`~fastflow.pipelines.instaflow`, ``--conditional``), OFTSR ×4 on photographs
(:mod:`~fastflow.pipelines.oftsr`, ``--sr``) and MeanFlow at the SlimFlow route's compute
(:mod:`~fastflow.pipelines.meanflow`, ``--methods slimflow,meanflow``), each in its own sub-directory. ``--seeds N`` repeats
each with seeds 0 … N−1: rows as mean ± sd, checks as seeds holding, orderings as paired gains."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fastflow.pipelines import instaflow, meanflow, oftsr, slimflow


def run(out: Path, seeds: Sequence[int], scale: float = 1.0, slimflow_run: bool = True, instaflow_run: bool = False,
        oftsr_run: bool = False, meanflow_run: bool = False, jobs: int = 1) -> None:
    """The chosen pipelines, once (one seed: 0) or over ``seeds``. MeanFlow runs beside each seed's
    SlimFlow run (after it: its budget is that run's recorded CPU time). ``jobs > 1`` runs the seeds
    of each pipeline in that many worker processes."""
    for wanted, where, pipeline in ((slimflow_run, out, slimflow), (meanflow_run, out, meanflow),
                                    (instaflow_run, out / "conditional", instaflow), (oftsr_run, out / "sr", oftsr)):
        if wanted and len(seeds) > 1:
            pipeline.run_seeds(where, seeds, scale=scale, jobs=jobs)
        elif wanted:
            pipeline.run(where, scale=scale)
