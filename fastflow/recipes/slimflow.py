"""SlimFlow on the embedded digits, as named stages (CPU; ``fastflow demo``).

1. :func:`train_teacher` — a 1-RF teacher (``configs/digits.yaml``, 0.74M parameters).
2. :func:`make_pairs` — teacher pairs ``(z, T(z))`` with adaptive RK45.
3. :func:`train_students` — a ~4× smaller student (``digits-small``) from scratch on the pairs,
   twice: plain reflow and Annealing Reflow (the paper's ablation).
4. :func:`distill` — the Annealing-Reflow student distilled into a one-step generator, twice:
   plain one-step distillation and Flow-Guided Distillation (the second ablation).
5. :func:`score_models` — every model × solver scored on the same noise (digits FD, class
   coverage, batch-1 latency, parameters) and the straightness of the flows.
6. :func:`export_onnx` — the FGD one-step generator to ONNX, validated against PyTorch with ONNX
   Runtime, its samples scored and timed.

:func:`run` chains them and writes the table, PNG grids, plots and ``results.json``; every stage
resumes where it stopped. ``scale`` multiplies every training budget and the pair count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from fastflow.errors import MissingBackendError
from fastflow.export import ExportOptions, Generator, export_checkpoint
from fastflow.export.formats import load_onnx
from fastflow.export.spec import BatchRange
from fastflow.export.validate import compare
from fastflow.flow import straightness
from fastflow.flow.guidance import cfg_velocity
from fastflow.metrics import digits_scores
from fastflow.metrics.cost import count_params
from fastflow.metrics.evaluate import mean_sd
from fastflow.models import load_model
from fastflow.pairs import FlowTeacher, generate_pairs
from fastflow.recipes import digits
from fastflow.recipes.report import (
    ResultRow,
    find,
    latency_quality_plot,
    print_checks,
    print_table,
    report_seeds,
    sample_rows_figure,
)
from fastflow.recipes.stages import (
    DIGITS_SHAPE,
    EAGER,
    Execution,
    budget,
    log,
    over_seeds,
    pair_teacher,
    timed,
    train_stage,
)
from fastflow.utils.images import save_grid
from fastflow.utils.io import atomic_write_json
from fastflow.utils.timing import measure_latency

TEACHER, PLAIN, ANNEAL = "1-RF teacher", "2-RF student (reflow)", "2-RF student (annealing)"
#: the stages (``timing.json`` names) on the route to the deployed FGD student, without the ablations
ROUTE = ("teacher-1rf", "pairs", "student-annealing", "student-fgd")
DISTILL, FGD = "distilled (plain)", "distilled (FGD)"
#: The paper's orderings on one-step digits FD: (claim, the better (method, solver), the worse one).
ORDERINGS = [
    ("2-RF one-step beats 1-RF one-step", (ANNEAL, "euler 1"), (TEACHER, "euler 1")),
    ("distilled one-step beats 2-RF one-step", (FGD, "euler 1"), (ANNEAL, "euler 1")),
    ("Annealing Reflow beats plain reflow (one step)", (ANNEAL, "euler 1"), (PLAIN, "euler 1")),
    ("FGD beats plain distillation (one step)", (FGD, "euler 1"), (DISTILL, "euler 1")),
]
#: what each model is scored with
PLAN = {TEACHER: [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 16), ("rk45", None)],
        PLAIN: [("euler", 1), ("euler", 2), ("euler", 4)], ANNEAL: [("euler", 1), ("euler", 2), ("euler", 4)],
        DISTILL: [("euler", 1)], FGD: [("euler", 1)]}
FIELDS = ["method", "solver", "nfe", "fd", "coverage", "latency_ms", "params"]


def student_overrides(pairs_root: Path) -> list[str]:
    """Config overrides of the students: ``digits-small`` from scratch on teacher pairs."""
    return ["data.name=pairs", f"data.root={pairs_root}", "model.preset=digits-small", "optim.warmup=100",
            "train.sample_every=0"]


def train_teacher(out: Path, scale: float, seed: int, steps: int | None = None, ex: Execution = EAGER) -> Path:
    log("[1/6] 1-RF teacher on digits")
    return train_stage(out, "teacher-1rf", [f"train.steps={steps or budget(1200, scale)}"], seed=seed, execution=ex)


def make_pairs(out: Path, teacher: Path, scale: float, seed: int, ex: Execution = EAGER) -> dict[str, Any]:
    log("[2/6] teacher pairs (RK45, rtol = atol = 1e-3)")
    flow = FlowTeacher.from_checkpoint(teacher, solver="rk45", rtol=1e-3, atol=1e-3)
    pair_teacher(flow.model, ex)
    with timed(out, "pairs"):
        manifest = generate_pairs(flow, out / "pairs", budget(2000, scale), DIGITS_SHAPE, shard_size=500,
                                  batch_size=500, seed=seed)
    log(f"  {manifest['count']} pairs, mean NFE {manifest['mean_nfe']:.1f}")
    return manifest


def train_students(out: Path, scale: float, seed: int, ex: Execution = EAGER) -> tuple[Path, Path]:
    """Plain reflow and Annealing Reflow students from scratch: their checkpoints."""
    log("[3/6] small students (digits-small, ~4x fewer parameters) from scratch on the pairs")
    pairs, steps = student_overrides(out / "pairs"), budget(1000, scale)
    plain = train_stage(out, "student-reflow", [*pairs, "objective={name: reflow}", f"train.steps={steps}"], seed=seed,
                        execution=ex)
    anneal = f"objective={{name: reflow, anneal: cos_{budget(400, scale)}}}"
    return plain, train_stage(out, "student-annealing", [*pairs, anneal, f"train.steps={steps}"], seed=seed,
                                execution=ex)


def distill(out: Path, student: Path, scale: float, seed: int, ex: Execution = EAGER) -> tuple[Path, Path]:
    """Plain one-step distillation and FGD (guided by ``student``) from ``student``: their checkpoints."""
    log("[4/6] one-step distillation of the Annealing-Reflow student: plain vs Flow-Guided")
    common = [*student_overrides(out / "pairs"), f"train.init_from={student}", f"train.steps={budget(500, scale)}",
              "optim.lr=5e-4", "optim.warmup=50"]
    plain = train_stage(out, "student-distill", [*common, "objective={name: distill}"], seed=seed, execution=ex)
    return plain, train_stage(
        out, "student-fgd", [*common, f"objective={{name: fgd, teacher: '{student}'}}"], seed=seed, execution=ex
    )


def score_models(models: dict[str, nn.Module], z: torch.Tensor) -> tuple[list[ResultRow], dict[str, torch.Tensor],
                                                                         dict[str, float]]:
    """Every model × solver of :data:`PLAN` from the same noise: rows, labelled samples, straightness."""
    log(f"[5/6] scoring {len(z)} samples per row from the same noise")
    rows, samples = [], {}
    todo = [(method, solver, steps) for method, solvers in PLAN.items() for solver, steps in solvers]
    for method, solver, steps in tqdm(todo, desc="scoring", unit="row", leave=False):
        row, x = digits.score(method, models[method], z, solver, steps)
        rows.append(row)
        samples[f"{method}, {row.solver}: NFE {row.nfe}, FD {row.metrics['fd']:.1f}"] = x
    straight = {m: straightness(cfg_velocity(models[m], None), z[:256], steps=32) for m in (TEACHER, PLAIN, ANNEAL)}
    return rows, samples, straight


def export_onnx(model: nn.Module, z: torch.Tensor, path: Path) -> tuple[ResultRow, bool] | None:
    """The one-step generator in ONNX (dynamic batch), checked against PyTorch; its row and
    whether it validated (None when ONNX Runtime is missing)."""
    log("[6/6] exporting the FGD one-step generator to ONNX and validating it with ONNX Runtime")
    gen = Generator(model, 1).eval()
    try:
        export_checkpoint(model, ExportOptions(format="onnx", output=path, batch=BatchRange(1, 1, len(z)),
                                               fused="off"), say=lambda _: None)
        run_onnx = load_onnx(path, torch.device("cpu"))
    except MissingBackendError as e:
        log(f"  skipped: {e}")
        return None
    val = compare(gen, run_onnx, [z[:1], z], atol=1e-4, rtol=1e-3)
    lat = measure_latency(lambda: run_onnx(z[:1]), warmup=3, iters=50)
    scores = digits_scores(run_onnx(z))
    log(f"  {path.name}: validation {'passed' if val['passed'] else 'FAILED'} (max abs err "
        f"{val['max_abs_err']:.2g}), FD {scores['fd']:.2f}, {lat.p50_ms:.2f} ms at batch 1")
    row = ResultRow(f"{FGD}, ONNX Runtime", "euler 1", 1.0, {"fd": scores["fd"], "coverage": scores["coverage"]},
                    lat.p50_ms, count_params(model))
    return row, val["passed"]


def checks_of(rows: list[ResultRow], straight: dict[str, float]) -> dict[str, bool]:
    """The run's own checks: the paper's orderings, straightness, and more steps beating one."""
    fd = lambda method, solver: find(rows, method, solver).metrics["fd"]  # noqa: E731
    checks = {claim: fd(*better) < fd(*worse) for claim, better, worse in ORDERINGS}
    checks["2-RF is straighter than 1-RF"] = straight[ANNEAL] < straight[TEACHER]
    checks["more Euler steps beat one step (1-RF)"] = all(
        r.metrics["fd"] < fd(TEACHER, "euler 1") for r in rows if r.method == TEACHER and r.nfe > 1)
    return checks


def run(out: Path, scale: float = 1.0, teacher_steps: int | None = None, seed: int = 0,
        ex: Execution = EAGER) -> dict[str, Any]:
    """The whole pipeline; ``seed`` seeds every training run, the pairs and the scoring noise; ``ex``: how
    the stages run."""
    out.mkdir(parents=True, exist_ok=True)
    log(f"SlimFlow on digits (seed {seed}) in {out}: 6 stages, {20 * scale:.0f} to {50 * scale:.0f} min at one thread "
        "on this project's 2-core x86 CPUs (docs/slimflow.md); rerun the same command to resume after an interruption")
    seconds: dict[str, float] = {}
    t_start = t0 = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t0
        seconds[stage], t0 = time.perf_counter() - t0, time.perf_counter()
        log(f"  {stage} took {seconds[stage]:.0f} s ({t0 - t_start:.0f} s so far)")

    teacher = train_teacher(out, scale, seed, teacher_steps, ex)
    lap("teacher")
    manifest = make_pairs(out, teacher, scale, seed, ex)
    lap("pairs")
    plain, anneal = train_students(out, scale, seed, ex)
    lap("students")
    plain_distill, fgd = distill(out, anneal, scale, seed, ex)
    lap("distillation")
    z = digits.eval_noise(seed)
    models = {TEACHER: load_model(teacher), PLAIN: load_model(plain), ANNEAL: load_model(anneal),
              DISTILL: load_model(plain_distill), FGD: load_model(fgd)}
    rows, samples, straight = score_models(models, z)
    lap("evaluation")
    exported = export_onnx(models[FGD], z, out / "student_fgd.onnx")
    lap("export")
    checks = checks_of(rows, straight)
    if exported is not None:
        rows.append(exported[0])
        checks["ONNX export validates against PyTorch"] = exported[1]
    _figures(rows, samples, out)
    seconds["total"] = time.perf_counter() - t_start
    result = {"scale": scale, "seed": seed, "rows": [r.record() for r in rows], "straightness": straight,
              "checks": checks, "pairs": {"count": manifest["count"], "mean_nfe": manifest["mean_nfe"]},
              "seconds": seconds}
    atomic_write_json(out / "results.json", result)
    _print(result, len(z), out)
    return result


def _figures(rows: list[ResultRow], samples: dict[str, torch.Tensor], out: Path) -> None:
    sample_rows_figure(samples, out / "samples.png")
    for name, key in (("fgd", f"{FGD}, euler 1"), ("teacher_rk45", f"{TEACHER}, rk45")):
        save_grid(samples[next(k for k in samples if k.startswith(key))][:64], out / f"grid_{name}.png", upscale=4)
    latency_quality_plot(rows, out / "latency_vs_nfe.png")


def _print(result: dict[str, Any], n: int, out: Path) -> None:
    print()
    print(f"SlimFlow on digits, {n} samples per row (digits FD: lower is better; latency: one image, this CPU)")
    print_table(result["rows"], FIELDS)
    print()
    for m, v in result["straightness"].items():
        print(f"straightness S of {m}: {v:.4f}")
    print_checks(result["checks"])
    print(f"wrote {out}/samples.png, grid_fgd.png, grid_teacher_rk45.png, latency_vs_nfe.png, "
          f"student_fgd.onnx, results.json in {result['seconds']['total']:.0f}s")


def run_seeds(out: Path, seeds: Sequence[int], scale: float = 1.0, jobs: int = 1,
              runs: Sequence[dict[str, Any]] | None = None, ex: Execution = EAGER) -> dict[str, Any]:
    """:func:`run` once per seed (``out/seed-S``): rows as mean ± sd, the paper's orderings as
    paired gains, straightness as mean ± sd."""
    result = over_seeds(partial(run, ex=ex), out, seeds, scale, ("method", "solver", "params (M)"), jobs, runs)
    runs = list(result["per_seed"].values())
    result["straightness"] = {m: mean_sd([r["straightness"][m] for r in runs]) for m in runs[0]["straightness"]}
    report_seeds(out, result, f"SlimFlow on digits ({digits.N_EVAL} samples per row and seed)", FIELDS, ORDERINGS)
    for m, (mean, sd) in result["straightness"].items():
        print(f"straightness S of {m}: {mean:.4f} ± {sd:.4f}")
    print(f"wrote {out}/results-seeds.json (each seed's run under {out}/seed-S)")
    return result
