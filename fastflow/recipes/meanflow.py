"""MeanFlow on the embedded digits at the SlimFlow route's compute (``fastflow demo --methods
slimflow,meanflow``), as named stages:

1. :func:`route_budget` — the CPU seconds the SlimFlow route to its deployed one-step student took in
   the same run (1-RF teacher + pairs + Annealing-Reflow student + FGD, from ``timing.json``; the
   ablation runs beside them are not counted).
2. :func:`train_meanflow` — the same student architecture (``digits-small``, two times) trained from
   scratch with the MeanFlow objective: a probe of :data:`PROBE_STEPS` steps measures the step time,
   then training resumes (bit-exactly) to the step count that fills the budget.
3. :func:`score` — MeanFlow at one and two steps beside the SlimFlow route's FGD student (one step)
   and Annealing-Reflow student (two steps), on the SlimFlow run's scoring noise.

The model embeds times unscaled (``t_scale: 1``): with DDPM++'s 999 the JVP term of the target
(∂u/∂t through high-frequency time features) grew without bound on digits (``benchmarks/NOTES.md``,
"Notes moved out of the code").
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from fastflow.errors import ConfigError
from fastflow.models import load_model
from fastflow.recipes import digits, slimflow
from fastflow.recipes.report import ResultRow, print_table, report_seeds, sample_rows_figure
from fastflow.recipes.stages import EAGER, Execution, budget, log, over_seeds, stage_seconds, timed, train_stage
from fastflow.train.logger import read_log
from fastflow.utils.images import save_grid
from fastflow.utils.io import atomic_write_json, read_json

MEANFLOW = "MeanFlow (from scratch)"
#: steps that measure MeanFlow's step time before the budget is filled
PROBE_STEPS = 100
#: the budget counts as filled when less than this fraction of it is left
FILL_TOLERANCE = 0.02
#: at most this many extensions of the probe's plan
MAX_TOP_UPS = 3
#: the one-step and two-step comparisons: (claim, better (method, solver), worse)
ORDERINGS = [
    ("MeanFlow one-step beats the SlimFlow route's one-step (FGD)", (MEANFLOW, "euler 1"), (slimflow.FGD, "euler 1")),
    ("MeanFlow two-step beats the 2-RF student's two-step", (MEANFLOW, "euler 2"), (slimflow.ANNEAL, "euler 2")),
    ("MeanFlow two-step beats its one-step", (MEANFLOW, "euler 2"), (MEANFLOW, "euler 1")),
]
OVERRIDES = ["model.preset=digits-small", "model.times=2", "model.t_scale=1", "objective={name: meanflow}",
             "optim.warmup=100", "train.sample_every=0"]


def route_budget(slim_dir: Path) -> float:
    """Seconds of the SlimFlow route in ``slim_dir`` (its ``timing.json``)."""
    return stage_seconds(slim_dir, slimflow.ROUTE)


def train_meanflow(out: Path, seconds: float, seed: int, scale: float = 1.0,
                   ex: Execution = EAGER) -> tuple[Path, dict[str, Any]]:
    """MeanFlow for ``seconds`` of training CPU time: its checkpoint and the plan (steps, measured rates).

    The probe's plan (:func:`fill_budget`) is topped up at most :data:`MAX_TOP_UPS` times from the CPU
    time actually spent and the step time of the last segment until the budget is filled within
    :data:`FILL_TOLERANCE` (a probe timed while the machine was busier than later under-spends; the
    learning rate is constant after warm-up, so a longer run is the same run continued)."""
    plan_path = out / "budget.json"
    plan = read_json(plan_path) if plan_path.is_file() else {}
    if "steps" in plan:
        plan.setdefault("segments", [plan["steps"]])  # a plan written before top-ups
    else:
        probe = budget(PROBE_STEPS, scale)
        log(f"[meanflow 1/2] probe: {probe} steps to measure the step time (budget {seconds:.0f} CPU s)")
        train_stage(out, "meanflow", [*OVERRIDES, f"train.steps={probe}", f"train.ckpt_every={probe}"], seed=seed,
                    execution=ex)
        plan = fill_budget(seconds, probe, stage_seconds(out, ["meanflow"]), read_log(out / "meanflow" / "log.jsonl"))
        atomic_write_json(plan_path, plan)
    while True:
        log(f"[meanflow 2/2] MeanFlow to {plan['steps']} steps ({plan['probe_s_per_step']:.3f} CPU s/step, "
            f"{plan['startup_s']:.1f} s start-up measured)")
        ckpt = train_stage(out, "meanflow", [*OVERRIDES, f"train.steps={plan['steps']}", "train.ckpt_every=500"],
                           seed=seed, execution=ex)
        if plan.get("filled"):
            return ckpt, plan
        plan = top_up(plan, stage_seconds(out, ["meanflow"]), read_log(out / "meanflow" / "log.jsonl"))
        atomic_write_json(plan_path, plan)


def fill_budget(seconds: float, probe: int, probe_s: float, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The step count whose CPU time fills ``seconds``, from a probe of ``probe`` steps that took
    ``probe_s`` CPU seconds in all and logged ``records`` (``cpu_s_per_step`` per interval).

    With a steady step time ``p`` (the last interval's) and a start-up ``S`` (the probe's time outside
    its steps, paid again by the resumed run), the total ``probe_s + S + (N − probe)·p`` equals the
    budget for ``N = probe + (seconds − probe_s − S) / p`` (at least ``probe``)."""
    if not records:
        raise ConfigError("the MeanFlow probe logged no steps (train.log_every larger than the probe?)")
    in_steps, last = 0.0, 0
    for rec in records:
        in_steps += rec["cpu_s_per_step"] * (rec["step"] - last)
        last = rec["step"]
    per_step, startup = records[-1]["cpu_s_per_step"], max(0.0, probe_s - in_steps)
    steps = probe + max(0, int((seconds - probe_s - startup) / per_step))
    return {"budget_s": seconds, "probe_steps": probe, "probe_s": probe_s, "probe_s_per_step": per_step,
            "startup_s": startup, "steps": steps, "segments": [steps]}


def top_up(plan: dict[str, Any], spent: float, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan after a segment that ended at ``plan["steps"]`` with ``spent`` CPU seconds in all:
    more steps at the segment's own mean step time when over :data:`FILL_TOLERANCE` of the budget is
    left and top-ups remain, else ``filled`` (with the seconds spent)."""
    left, start = plan["budget_s"] - spent, plan["segments"][-2] if len(plan["segments"]) > 1 else plan["probe_steps"]
    seg = [r for r in records if start < r["step"] <= plan["steps"]]
    cpu, steps = 0.0, 0
    for prev, rec in zip([start] + [r["step"] for r in seg], seg, strict=False):
        cpu, steps = cpu + rec["cpu_s_per_step"] * (rec["step"] - prev), steps + rec["step"] - prev
    extra = int((left - plan["startup_s"]) / (cpu / steps)) if steps else 0
    if left <= FILL_TOLERANCE * plan["budget_s"] or len(plan["segments"]) > MAX_TOP_UPS or extra < 1:
        return {**plan, "filled": True, "spent_s": spent}
    return {**plan, "steps": plan["steps"] + extra, "segments": [*plan["segments"], plan["steps"] + extra]}





def score(slim_dir: Path, meanflow: Path, seed: int) -> tuple[list[ResultRow], dict[str, Any]]:
    """MeanFlow at 1 and 2 steps and the SlimFlow route's students, from the same noise."""
    z = digits.eval_noise(seed)
    rows, samples = [], {}
    for method, ckpt, plan in ((MEANFLOW, meanflow, [("euler", 1), ("euler", 2)]),
                               (slimflow.FGD, slim_dir / "student-fgd", [("euler", 1)]),
                               (slimflow.ANNEAL, slim_dir / "student-annealing", [("euler", 2)])):
        model = load_model(ckpt)
        for solver, steps in plan:
            row, x = digits.score(method, model, z, solver, steps)
            rows.append(row)
            samples[f"{method}, {row.solver}: FD {row.metrics['fd']:.1f}"] = x
    return rows, samples


def run(slim_dir: Path, scale: float = 1.0, seed: int = 0, ex: Execution = EAGER) -> dict[str, Any]:
    """MeanFlow at the budget of the SlimFlow run in ``slim_dir`` (written under ``slim_dir/meanflow``)."""
    out = slim_dir / "meanflow"
    seconds = route_budget(slim_dir)
    ckpt, plan = train_meanflow(out, seconds, seed, scale, ex)
    with timed(out, "scoring"):
        rows, samples = score(slim_dir, ckpt, seed)
    plan["train_s"] = stage_seconds(out, ["meanflow"])
    sample_rows_figure(samples, out / "samples.png")
    save_grid(samples[next(k for k in samples if k.startswith(f"{MEANFLOW}, euler 1"))][:64],
              out / "grid_meanflow.png", upscale=4)
    fd = {(r.method, r.solver): r.metrics["fd"] for r in rows}
    checks = {claim: fd[better] < fd[worse] for claim, better, worse in ORDERINGS}
    result = {"seed": seed, "scale": scale, "budget": plan, "rows": [r.record() for r in rows], "checks": checks}
    atomic_write_json(out / "results.json", result)
    print()
    print(f"MeanFlow vs the SlimFlow route at equal training time ({plan['budget_s']:.0f}s budget, "
          f"{plan['train_s']:.0f}s spent, {plan['steps']} steps)")
    print_table(result["rows"], slimflow.FIELDS)
    for claim, ok in checks.items():
        print(f"  [{'x' if ok else ' '}] {claim}")
    print(f"wrote {out}/samples.png, grid_meanflow.png, results.json")
    return result


def run_seeds(out: Path, seeds: Sequence[int], scale: float = 1.0, jobs: int = 1,
              runs: Sequence[dict[str, Any]] | None = None, ex: Execution = EAGER) -> dict[str, Any]:
    """:func:`run` beside each seed's SlimFlow run (``out/seed-S``): rows as mean ± sd, orderings paired."""
    result = over_seeds(partial(run, ex=ex), out, seeds, scale, ("method", "solver"), jobs, runs)
    report_seeds(out / "meanflow", result, f"MeanFlow vs the SlimFlow route at equal time ({digits.N_EVAL} samples "
                 "per row and seed)", slimflow.FIELDS, ORDERINGS)
    return result
