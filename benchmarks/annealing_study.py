r"""Annealing Reflow vs plain reflow on digits: schedules and budgets, chosen on validation data.

SlimFlow's Annealing Reflow blends fresh noise into the stored teacher noise,
:math:`z' = \sqrt{1-\beta_i^2}\,z + \beta_i\,\epsilon`, with :math:`\beta_i` annealed from 1 to 0
(``fastflow/objectives/annealing.py``). ``fastflow demo --seeds 3`` found its one-step gain over
plain reflow within seed noise at the demo's schedule (``cos_400`` of 1000 steps). This study trains
from-scratch students on each demo seed's teacher pairs (the demo's student settings) for every
setting (training steps × student width) and schedule in ``GRID``, and scores each one-step student
three ways, FDs on ``N_FD`` samples:

* ``val_fd`` — digits FD from **validation noise** (seed ``VAL_SEED + s``): the only number a
  schedule is *chosen* on;
* ``val_mse`` — mean squared error against the teacher's own output on ``N_VAL`` held-out teacher
  pairs (how well the student learned the coupling; a training-side signal, not used to choose);
* ``eval_fd`` — digits FD from the demo's evaluation noise seed ``2024 + s``; reported for every
  run, never used for the choice.

For each setting the annealed schedule with the lowest mean ``val_fd`` over seeds is selected; its
paired gain over plain reflow on ``eval_fd`` (plain − annealed within a seed, mean ± sd over
seeds) is the result.

Run after ``FASTFLOW_THREADS=1 fastflow demo --seeds 3 --out DEMO``::

    python benchmarks/annealing_study.py --demo DEMO --out STUDY --jobs 2

Each job trains on one thread; ``--jobs`` runs that many at once (one per core). Runs resume
(finished runs and their scores are kept), so re-running continues.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from fastflow.flow import generate
from fastflow.metrics import digits_scores
from fastflow.metrics.evaluate import mean_sd
from fastflow.models import load_model
from fastflow.pairs import FlowTeacher, PairDataset, generate_pairs
from fastflow.recipes.digits import eval_noise
from fastflow.recipes.slimflow import student_overrides
from fastflow.recipes.stages import DIGITS_SHAPE, train_stage
from fastflow.train.state import latest_checkpoint
from fastflow.utils.images import pyplot, save_figure
from fastflow.utils.io import atomic_write_json, read_json
from fastflow.utils.table import format_table

#: (training steps, student base channels) → annealing schedules tried; ``reflow`` is plain reflow,
#: the baseline. 8 channels is the demo's ``digits-small`` (0.19M), 4 channels a 0.05M student.
GRID: dict[tuple[int, int], tuple[str, ...]] = {
    (1000, 8): ("reflow", "cos_100", "cos_200", "cos_400", "linear_200"),
    (3000, 8): ("reflow", "cos_300", "cos_1200"),
    (1000, 4): ("reflow", "cos_200", "cos_400"),
    (3000, 4): ("reflow", "cos_1200")}
N_VAL = 1000  # held-out teacher pairs per seed (val_mse)
N_FD = 5000  # samples per FD: at 1,000 two noise draws of one model differ by up to 5 FD
VAL_SEED = 10_000  # validation noise of demo seed s: VAL_SEED + s (training pairs: s, evaluation: 2024 + s)


@dataclass(frozen=True)
class Run:
    seed: int
    steps: int
    channels: int
    schedule: str

    @property
    def name(self) -> str:
        return f"{self.steps}-c{self.channels}-{self.schedule}"


def _student(demo: Path, out: Path, run: Run) -> Path:
    """Train (or resume) one student on the demo seed's pairs with the demo's student settings."""
    objective = "{name: reflow}" if run.schedule == "reflow" else f"{{name: reflow, anneal: {run.schedule}}}"
    return train_stage(out / f"seed-{run.seed}", run.name,
                       [*student_overrides(demo / f"seed-{run.seed}" / "pairs"), f"model.channels={run.channels}",
                        f"objective={objective}", f"train.steps={run.steps}"], seed=run.seed)


def _val_pairs(demo: Path, out: Path, seed: int) -> Path:
    teacher = FlowTeacher.from_checkpoint(latest_checkpoint(demo / f"seed-{seed}" / "teacher-1rf"),
                                          solver="rk45", rtol=1e-3, atol=1e-3)  # as the training pairs
    root = out / f"seed-{seed}" / "val-pairs"
    generate_pairs(teacher, root, N_VAL, DIGITS_SHAPE, shard_size=500, batch_size=500, seed=VAL_SEED + seed)
    return root


@torch.no_grad()
def _scores(ckpt: Path, val_root: Path, seed: int) -> dict[str, float]:
    """One-step ``val_fd`` (validation noise), ``val_mse`` (against the teacher on held-out pairs)
    and ``eval_fd`` (the demo's evaluation noise seed), FDs on ``N_FD`` samples."""
    model = load_model(ckpt)
    one_step = lambda z: generate(model, z, "euler", 1).x  # noqa: E731
    noise = lambda s: torch.randn(N_FD, *DIGITS_SHAPE, generator=torch.Generator().manual_seed(s))  # noqa: E731
    val = PairDataset(str(val_root)).get(torch.arange(N_VAL))
    return {"val_fd": digits_scores(one_step(noise(VAL_SEED + seed)))["fd"],
            "val_mse": float((one_step(val.z) - val.x).pow(2).mean()),
            "eval_fd": digits_scores(one_step(eval_noise(seed, N_FD)))["fd"], "n_fd": N_FD}


def _job(demo: Path, out: Path, run: Run) -> dict[str, Any]:
    """Train and score one run; the scores are cached next to its checkpoints."""
    cache = out / f"seed-{run.seed}" / run.name / "scores.json"
    if cache.is_file() and (record := read_json(cache)).get("n_fd") == N_FD:
        return record
    ckpt = _student(demo, out, run)
    record = {**asdict(run), **_scores(ckpt, out / f"seed-{run.seed}" / "val-pairs", run.seed)}
    atomic_write_json(cache, record)
    print(f"  seed {run.seed} {run.name:16s} val FD {record['val_fd']:6.2f}  val MSE {record['val_mse']:.4f}  "
          f"eval FD {record['eval_fd']:6.2f}", flush=True)
    return record


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting (steps, channels) and schedule: mean ± sd of every score and the paired gain over
    plain reflow of the same seed and setting; per setting: the schedule chosen on ``val_fd`` alone
    and its evaluation result."""
    seeds = sorted({r["seed"] for r in records})
    by = {(r["seed"], r["steps"], r["channels"], r["schedule"]): r for r in records}
    rows, chosen = [], {}
    for steps, channels in sorted({(r["steps"], r["channels"]) for r in records}):
        setting = f"{steps} steps, {channels} channels"
        schedules = dict.fromkeys(r["schedule"] for r in records if (r["steps"], r["channels"]) == (steps, channels))
        if "reflow" not in schedules:
            raise ValueError(f"{setting}: no plain-reflow baseline among the runs")
        for sched in schedules:
            rs = [by[(s, steps, channels, sched)] for s in seeds]
            base = [by[(s, steps, channels, "reflow")] for s in seeds]
            row = {"steps": steps, "channels": channels, "schedule": sched, "seeds": len(rs)}
            for key in ("val_fd", "val_mse", "eval_fd"):
                row[key], row[f"{key}_sd"] = mean_sd([r[key] for r in rs])
            for key in ("val", "eval"):
                gains = [b[f"{key}_fd"] - r[f"{key}_fd"] for b, r in zip(base, rs, strict=False)]
                row[f"{key}_gain"], row[f"{key}_gain_sd"] = mean_sd(gains)
                row[f"{key}_gain_per_seed"] = gains
            row["eval_gain_seeds"] = sum(g > 0 for g in row["eval_gain_per_seed"])
            rows.append(row)
        annealed = [r for r in rows if (r["steps"], r["channels"]) == (steps, channels) and r["schedule"] != "reflow"]
        if annealed:
            best = min(annealed, key=lambda r: r["val_fd"])
            chosen[setting] = {"schedule": best["schedule"], "eval_gain": best["eval_gain"],
                               "eval_gain_sd": best["eval_gain_sd"],
                               "seeds_holding": f"{best['eval_gain_seeds']}/{len(seeds)}",
                               "beyond_one_sd": best["eval_gain"] > best["eval_gain_sd"]}
    return {"seeds": seeds, "rows": rows, "chosen_on_validation": chosen}


def _plot(summary: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    rows = [r for r in summary["rows"] if r["schedule"] != "reflow"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, key, title in ((axes[0], "val_gain", "validation noise (selection)"),
                           (axes[1], "eval_gain", "evaluation noise (reported)")):
        for i, r in enumerate(rows):
            ax.scatter([i] * len(r[f"{key}_per_seed"]), r[f"{key}_per_seed"], color="tab:blue", s=14, alpha=0.6)
            ax.errorbar([i], [r[key]], yerr=[r[f"{key}_sd"]], color="black", capsize=4, marker="o")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(rows)), [f"{r['steps']}·c{r['channels']}\n{r['schedule']}" for r in rows], fontsize=7)
        ax.set_title(f"gain over plain reflow, {title}", fontsize=10)
    axes[0].set_ylabel("plain − annealed one-step FD\n(> 0: annealing better)")
    fig.suptitle("Annealing Reflow on digits: paired one-step FD gain per seed (dots), mean ± sd (bars)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, required=True, help="output of `fastflow demo --seeds N`")
    p.add_argument("--out", type=Path, default=Path("annealing_study"))
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each")
    p.add_argument("--result", type=Path, default=None, help="also write the summary JSON here")
    args = p.parse_args(argv)
    seeds = sorted(int(d.name.removeprefix("seed-")) for d in args.demo.glob("seed-*")
                   if (d / "pairs" / "manifest.json").is_file() and (d / "teacher-1rf").is_dir())
    if not seeds:
        print(f"annealing_study: error: {args.demo} holds no seed-S/ with a teacher and pairs "
              "(run `fastflow demo --seeds 3 --out DIR` first)", file=sys.stderr)
        return 2
    runs = [Run(s, steps, ch, sched) for (steps, ch), scheds in GRID.items() for sched in scheds for s in seeds]
    runs.sort(key=lambda r: -r.steps * r.channels)  # longest first keeps the workers busy to the end
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        for f in [pool.submit(_val_pairs, args.demo, args.out, s) for s in seeds]:
            f.result()
        records = list(pool.map(_job, [args.demo] * len(runs), [args.out] * len(runs), runs))
    summary = {**summarize(records), "grid": {f"{k[0]} steps, {k[1]} channels": v for k, v in GRID.items()},
               "n_val_pairs": N_VAL, "n_fd": N_FD, "records": records}
    for path in (args.out / "results.json", args.result):
        if path is not None:
            atomic_write_json(path, summary)
    _plot(summary, args.out / "annealing_study.png")
    fmt = lambda m, s, d=2: f"{m:.{d}f} ± {s:.{d}f}"  # noqa: E731
    print(format_table([{"steps": r["steps"], "channels": r["channels"], "schedule": r["schedule"],
                         "val FD": fmt(r["val_fd"], r["val_fd_sd"]), "val MSE": fmt(r["val_mse"], r["val_mse_sd"], 4),
                         "eval FD": fmt(r["eval_fd"], r["eval_fd_sd"]),
                         "eval gain": fmt(r["eval_gain"], r["eval_gain_sd"]),
                         "holds in": f"{r['eval_gain_seeds']}/{r['seeds']}"} for r in summary["rows"]],
                       ["steps", "channels", "schedule", "val FD", "val MSE", "eval FD", "eval gain", "holds in"]))
    print(json.dumps(summary["chosen_on_validation"], indent=1))
    print(f"wrote {args.out}/results.json and {args.out}/annealing_study.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
