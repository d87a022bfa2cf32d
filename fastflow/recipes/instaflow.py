"""InstaFlow on class-conditioned digits, as named stages (the label is the condition; text
embeddings take the same path through the model's token conditioning).

1. :func:`train_teacher` — a class-conditional 1-RF teacher with 10 % condition dropout.
2. :func:`make_pairs` — teacher pairs with CFG scale α (:data:`CFG_PAIRS`), labels in the shards.
3. :func:`train_2rf` — a 2-RF from the teacher on the pairs, with condition dropout.
4. :func:`distill` — one-step Flow-Guided Distillation guided by the 2-RF at α = :data:`CFG_DISTILL`.
5. :func:`score_models` — digits FD, coverage and the digits classifier's label accuracy (does a
   one-step sample show the digit it was asked for?).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from fastflow.models import load_model
from fastflow.pairs import FlowTeacher, generate_pairs
from fastflow.recipes import digits
from fastflow.recipes.report import ResultRow, find, print_checks, print_table, report_seeds, sample_rows_figure
from fastflow.recipes.stages import DIGITS_SHAPE, EAGER, Execution, budget, log, over_seeds, pair_teacher, train_stage
from fastflow.utils.images import save_grid
from fastflow.utils.io import atomic_write_json

CFG_PAIRS = 2.0  # CFG scale of the conditional teacher when it generates pairs
# α of the 2-RF that guides the distillation. InstaFlow uses 1.5 on SD; here the pairs already carry
# α = 2 and more guidance over-guides (benchmarks/NOTES.md, "Notes moved out of the code").
CFG_DISTILL = 1.0
TEACHER, REFLOW, ONE_STEP = "1-RF teacher", "2-RF", "one-step (FGD)"
#: The orderings on digits FD, rows named by (method, solver, CFG α).
ORDERINGS = [
    ("one-step student beats the teacher's one step (FD)", (ONE_STEP, "euler 1", 1.0), (TEACHER, "euler 1", CFG_PAIRS)),
    ("distilled one step beats the 2-RF's one step (FD)", (ONE_STEP, "euler 1", 1.0), (REFLOW, "euler 1", 1.0)),
    ("one step beats the CFG teacher's RK45 (FD)", (ONE_STEP, "euler 1", 1.0), (TEACHER, "rk45", CFG_PAIRS)),
]
ACCURACY = "one-step samples show the requested digit (≥ 80 %)"
COND = ["model.num_classes=10", "train.sample_every=0"]
FIELDS = ["method", "solver", "cfg", "nfe", "label_accuracy", "fd", "coverage", "latency_ms", "params"]


def train_teacher(out: Path, scale: float, seed: int, ex: Execution = EAGER) -> Path:
    log("[cond 1/4] class-conditional 1-RF teacher on digits (10 % condition dropout)")
    return train_stage(out, "teacher-1rf", [*COND, "objective={name: rf, cond_drop: 0.1}",
                                            f"train.steps={budget(1200, scale)}"], seed=seed, execution=ex)


def make_pairs(out: Path, teacher: Path, scale: float, seed: int, ex: Execution = EAGER) -> dict[str, Any]:
    log(f"[cond 2/4] teacher pairs with CFG α = {CFG_PAIRS} (RK45, labels stored in the shards)")
    flow = FlowTeacher.from_checkpoint(teacher, solver="rk45", rtol=1e-3, atol=1e-3, cfg_scale=CFG_PAIRS)
    pair_teacher(flow.model, ex)
    manifest = generate_pairs(flow, out / "pairs", budget(2000, scale), DIGITS_SHAPE, shard_size=500,
                              batch_size=500, seed=seed)
    log(f"  {manifest['count']} pairs, mean NFE {manifest['mean_nfe']:.1f}")
    return manifest


def _on_pairs(out: Path) -> list[str]:
    return [*COND, "data.name=pairs", f"data.root={out / 'pairs'}", "optim.warmup=50"]


def train_2rf(out: Path, teacher: Path, scale: float, seed: int, ex: Execution = EAGER) -> Path:
    log("[cond 3/4] 2-RF from the teacher (reflow, 10 % condition dropout)")
    return train_stage(out, "2rf", [*_on_pairs(out), "objective={name: reflow, cond_drop: 0.1}",
                                    f"train.init_from={teacher}", f"train.steps={budget(600, scale)}",
                                    "optim.lr=1e-3"], seed=seed, execution=ex)


def distill(out: Path, reflow: Path, scale: float, seed: int, ex: Execution = EAGER) -> Path:
    log(f"[cond 4/4] one-step Flow-Guided Distillation guided by the 2-RF (α = {CFG_DISTILL})")
    fgd = f"objective={{name: fgd, teacher: '{reflow}', cfg_scale: {CFG_DISTILL}}}"
    return train_stage(out, "one-step", [*_on_pairs(out), f"train.init_from={reflow}",
                                         f"train.steps={budget(500, scale)}", "optim.lr=5e-4", fgd], seed=seed,
                       execution=ex)


def score_models(teacher: Path, reflow: Path, one_step: Path, z: torch.Tensor) -> tuple[list[ResultRow],
                                                                                      dict[str, torch.Tensor]]:
    """Each row from the same noise ``z`` with labels 0..9 in turn."""
    log(f"scoring {len(z)} samples per row, labels 0..9 in turn, same noise")
    labels = torch.arange(len(z)) % 10
    plan = [(TEACHER, teacher, "rk45", None, CFG_PAIRS), (TEACHER, teacher, "euler", 1, CFG_PAIRS),
            (REFLOW, reflow, "euler", 1, 1.0), (REFLOW, reflow, "euler", 1, 1.5), (REFLOW, reflow, "euler", 4, 1.0),
            (ONE_STEP, one_step, "euler", 1, 1.0)]
    rows, samples = [], {}
    for method, ckpt, solver, steps, alpha in plan:
        row, x = digits.score(method, load_model(ckpt), z, solver, steps, labels, alpha)
        rows.append(row)
        samples[f"{method}, {row.solver}, α {alpha}: accuracy {row.metrics['label_accuracy']:.2f}, "
                f"FD {row.metrics['fd']:.1f}"] = x[:100]
    return rows, samples


def run(out: Path, scale: float = 1.0, seed: int = 0, ex: Execution = EAGER) -> dict[str, Any]:
    """The whole pipeline; ``seed`` seeds every training run, the pairs and the scoring noise."""
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    teacher = train_teacher(out, scale, seed, ex)
    manifest = make_pairs(out, teacher, scale, seed, ex)
    reflow = train_2rf(out, teacher, scale, seed, ex)
    one_step = distill(out, reflow, scale, seed, ex)
    rows, samples = score_models(teacher, reflow, one_step, digits.eval_noise(seed))
    fd = lambda *key: find(rows, *key).metrics["fd"]  # noqa: E731
    checks = {ACCURACY: find(rows, ONE_STEP, "euler 1", 1.0).metrics["label_accuracy"] >= 0.8,
              **{claim: fd(*better) < fd(*worse) for claim, better, worse in ORDERINGS}}
    sample_rows_figure(samples, out / "samples.png", per_row=20)
    save_grid(samples[next(k for k in samples if k.startswith(ONE_STEP))], out / "grid_one_step.png",
              nrow=10, upscale=4)  # column j shows digit j
    result = {"seed": seed, "rows": [r.record() for r in rows], "checks": checks,
              "seconds": time.perf_counter() - t_start,
              "pairs": {"count": manifest["count"], "mean_nfe": manifest["mean_nfe"], "cfg_scale": CFG_PAIRS}}
    atomic_write_json(out / "results.json", result)
    print()
    print(f"InstaFlow on class-conditioned digits, {digits.N_EVAL} samples per row (label accuracy by the digits "
          "classifier; chance is 0.1)")
    print_table(result["rows"], FIELDS)
    print_checks(checks)
    print(f"wrote {out}/samples.png, grid_one_step.png, results.json in {result['seconds']:.0f}s")
    return result


def run_seeds(out: Path, seeds: Sequence[int], scale: float = 1.0, jobs: int = 1,
              runs: Sequence[dict[str, Any]] | None = None, ex: Execution = EAGER) -> dict[str, Any]:
    """:func:`run` once per seed (``out/seed-S``): rows as mean ± sd, the orderings as paired gains."""
    result = over_seeds(partial(run, ex=ex), out, seeds, scale, ("method", "solver", "CFG α", "params (M)"), jobs, runs)
    report_seeds(out, result, f"InstaFlow on class-conditioned digits ({digits.N_EVAL} samples per row and seed)",
                 ["method", "solver", "cfg", "nfe", "label_accuracy", "fd", "coverage"], ORDERINGS)
    return result
