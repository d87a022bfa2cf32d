"""The embedded end-to-end demo (``make demo`` / ``fastflow demo``): SlimFlow on digits, CPU only.

1. Train a 1-RF teacher (``configs/digits.yaml``, 0.74M parameters).
2. Generate teacher pairs ``(z, T(z))`` with adaptive RK45.
3. Train a ~4× smaller student (``digits-small``) from scratch on the pairs twice: plain reflow
   and Annealing Reflow (the paper's ablation).
4. Distil the Annealing-Reflow student into a one-step generator twice: plain one-step
   distillation and Flow-Guided Distillation (the second ablation).
5. Score every model × solver with the digits metric (FD, class coverage), straightness,
   parameters and batch-1 latency; write the table, PNG grids, plots and ``results.json``.
6. Export the FGD one-step generator to ONNX, validate it against PyTorch with ONNX Runtime,
   and score and time the ONNX samples.

Every stage resumes where it stopped (``train --resume`` semantics, finished pair shards are
kept), so re-running continues. ``--scale`` multiplies every training budget and the pair count.

Two optional runs (``fastflow demo --conditional --sr``), each written to its own sub-directory:

* :func:`run_conditional` — InstaFlow on class-conditioned digits: a conditional 1-RF teacher with
  condition dropout, pairs with CFG scale α, a 2-RF with condition dropout initialised from the
  teacher, one-step Flow-Guided Distillation guided by the 2-RF (``CFG_DISTILL``); the digits classifier
  checks that one-step samples show the digit they were asked for.
* :func:`run_sr` — OFTSR ×4 on photographs (random crops of scikit-image's bundled photographs):
  the SR teacher flow, the one-step distillation and the τ sweep (PSNR falls, high-frequency energy
  rises) on crops of held-out photographs, against the bicubic input and the teacher.

``--seeds N`` repeats each run with seeds 0 … N−1 (:func:`run_seeds`, :func:`run_conditional_seeds`,
:func:`run_sr_seeds`, all through :func:`over_seeds`): rows as mean ± sd, checks as seeds holding.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastflow.utils.timing import measure_latency
from fastflow.flow import generate, straightness
from fastflow.flow.guidance import cfg_velocity
from fastflow.metrics import digits_scores
from fastflow.metrics.digits import classify
from fastflow.metrics.cost import count_params
from fastflow.metrics.evaluate import aggregate_rows, mean_sd
from fastflow.metrics.sr_eval import save_sweep_plot, tau_sweep
from fastflow.models import load_model
from fastflow.pairs import FlowTeacher, generate_pairs
from fastflow.train import load_config, train
from fastflow.train.config import PACKAGED_CONFIGS
from fastflow.train.state import latest_checkpoint
from fastflow.utils.images import save_figure, save_grid
from fastflow.utils.io import atomic_write_json
from fastflow.utils.table import format_table

N_EVAL = 1000
SHAPE = (1, 16, 16)


def _log(msg: str) -> None:
    print(msg, flush=True)


def train_stage(out: Path, name: str, overrides: list[str], config: str | None = "digits.yaml", seed: int = 0) -> Path:
    """Train ``out/name`` from a packaged config plus ``key=value`` overrides, resuming a run that
    has checkpoints (a finished one returns at once); returns its latest checkpoint."""
    cfg = load_config(PACKAGED_CONFIGS / config if config else None,
                      [f"out_dir={out / name}", "train.tensorboard=false", f"seed={seed}", *overrides])
    _log(f"  {name}: {cfg.objective.get('name')} · {cfg.model} · {cfg.train.steps} steps")
    return latest_checkpoint(train(cfg, resume=latest_checkpoint(out / name) is not None))


def student_overrides(pairs_root: Path) -> list[str]:
    """Config overrides of the demo's students: ``digits-small`` from scratch on teacher pairs."""
    return ["data.name=pairs", f"data.root={pairs_root}", "model.preset=digits-small", "optim.warmup=100",
            "train.sample_every=0"]


def _budget(n: int, scale: float) -> int:
    return max(1, int(round(n * scale)))


def _score(method: str, model: nn.Module, z: torch.Tensor, solver: str, steps: int | None,
           labels: torch.Tensor | None = None, cfg: float = 1.0,
           rk45_tol: float = 1e-3) -> tuple[dict[str, Any], torch.Tensor]:
    """One table row: NFE, digits FD, coverage, batch-1 latency, parameters; with ``labels`` (a
    class-conditional model sampled at CFG scale ``cfg``) also the classifier's label accuracy."""
    kw = {"rtol": rk45_tol, "atol": rk45_tol} if solver == "rk45" else {}
    res = generate(model, z, solver, steps, cond=labels, cfg_scale=cfg, **kw)
    nfe = float(res.sample_nfe.float().mean()) if res.sample_nfe is not None else float(res.nfe)
    z1, c1 = z[:1], None if labels is None else labels[:1]
    lat = measure_latency(lambda: generate(model, z1, solver, steps, cond=c1, cfg_scale=cfg, **kw), warmup=2,
                          iters=5 if solver == "rk45" else 20)
    scores = digits_scores(res.x)
    row = {"method": method, "solver": f"{solver} {steps}" if steps else solver, "NFE": round(nfe, 1),
           "digits FD": scores["fd"], "coverage": scores["coverage"], "latency ms (b=1)": lat.p50_ms,
           "params (M)": count_params(model) / 1e6}
    extra = ""
    if labels is not None:
        row.update({"CFG α": cfg, "label accuracy": float((classify(res.x) == labels).float().mean())})
        extra = f"  α {cfg:.1f}  accuracy {row['label accuracy']:.3f}"
    _log(f"  {method:28s} {row['solver']:9s} NFE {nfe:6.1f}  FD {scores['fd']:8.2f}  "
         f"coverage {scores['coverage']:.3f}  {lat.p50_ms:.2f} ms{extra}")
    return row, res.x


def _plots(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, m in enumerate(methods):
        rs = [r for r in rows if r["method"] == m]
        for ax, key in zip(axes, ("latency ms (b=1)", "digits FD")):
            ax.plot([r["NFE"] for r in rs], [r[key] for r in rs], "o-", color=f"C{i}", label=m)
    axes[0].set(xscale="log", yscale="log", xlabel="NFE", ylabel="latency per image, batch 1 (ms)",
                title="latency vs NFE")
    axes[1].set(xscale="log", yscale="log", xlabel="NFE", ylabel="digits FD (lower is better)",
                title="quality vs NFE")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "latency_vs_nfe.png")


def _overview(samples: dict[str, torch.Tensor], path: Path, per_row: int = 16) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastflow.utils.images import to_uint8

    fig, axes = plt.subplots(len(samples), 1, figsize=(per_row * 0.6, len(samples) * 0.95), dpi=110)
    for ax, (label, x) in zip(axes, samples.items()):
        imgs = np.pad(to_uint8(x[:per_row])[..., 0], ((0, 0), (0, 0), (1, 1)), constant_values=255)
        ax.imshow(np.concatenate(list(imgs), axis=1), cmap="gray", vmin=0, vmax=255)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def _export_onnx(model: nn.Module, z: torch.Tensor, path: Path) -> dict[str, Any] | None:
    """Export the one-step generator (dynamic batch), check it against PyTorch, score its samples."""
    from fastflow.errors import MissingBackendError
    from fastflow.export.formats import build_onnx, load_onnx
    from fastflow.export.generator import Generator
    from fastflow.export.spec import BatchRange
    from fastflow.export.validate import compare

    gen = Generator(model, 1).eval()
    try:
        with torch.no_grad():
            build_onnx(gen, (z[:1],), BatchRange(1, 1, len(z)), path, opset=19, dtype="fp32")
        run = load_onnx(path, torch.device("cpu"))
    except MissingBackendError as e:
        _log(f"  skipped: {e}")
        return None
    val = compare(gen, run, [z[:1], z], atol=1e-4, rtol=1e-3)
    lat = measure_latency(lambda: run(z[:1]), warmup=3, iters=50)
    scores = digits_scores(run(z))
    _log(f"  {path.name}: validation {'passed' if val['passed'] else 'FAILED'} (max abs err "
         f"{val['max_abs_err']:.2g}), FD {scores['fd']:.2f}, {lat.p50_ms:.2f} ms at batch 1")
    return {"method": "distilled (FGD), ONNX Runtime", "solver": "euler 1", "NFE": 1.0,
            "digits FD": scores["fd"], "coverage": scores["coverage"], "latency ms (b=1)": lat.p50_ms,
            "params (M)": count_params(model) / 1e6, "validation": val["passed"]}


#: The paper's orderings on one-step digits FD: (claim, the better (method, solver), the worse one);
#: a row may also be named by (method, solver, CFG α).
ORDERINGS = [
    ("2-RF one-step beats 1-RF one-step", ("2-RF student (annealing)", "euler 1"), ("1-RF teacher", "euler 1")),
    ("distilled one-step beats 2-RF one-step", ("distilled (FGD)", "euler 1"), ("2-RF student (annealing)", "euler 1")),
    ("Annealing Reflow beats plain reflow (one step)", ("2-RF student (annealing)", "euler 1"),
     ("2-RF student (reflow)", "euler 1")),
    ("FGD beats plain distillation (one step)", ("distilled (FGD)", "euler 1"), ("distilled (plain)", "euler 1")),
]


def _fd(rows: list[dict[str, Any]], method: str, solver: str, alpha: float | None = None) -> float:
    return next(r["digits FD"] for r in rows if (r["method"], r["solver"], r.get("CFG α")) == (method, solver, alpha))


def run_demo(out: Path, scale: float = 1.0, teacher_steps: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The SlimFlow pipeline; ``seed`` seeds every training run, the pairs and the scoring noise."""
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(stage: str, t0: float) -> None:
        seconds[stage] = time.perf_counter() - t0

    _log("[1/6] 1-RF teacher on digits")
    t0 = time.perf_counter()
    teacher_ckpt = train_stage(out, "teacher-1rf", [f"train.steps={teacher_steps or _budget(1200, scale)}"], seed=seed)
    lap("teacher", t0)

    _log("[2/6] teacher pairs (RK45, rtol = atol = 1e-3)")
    t0 = time.perf_counter()
    n_pairs = _budget(2000, scale)
    teacher = FlowTeacher.from_checkpoint(teacher_ckpt, solver="rk45", rtol=1e-3, atol=1e-3)
    manifest = generate_pairs(teacher, out / "pairs", n_pairs, SHAPE, shard_size=500, batch_size=500, seed=seed)
    lap("pairs", t0)
    _log(f"  {manifest['count']} pairs, mean NFE {manifest['mean_nfe']:.1f}")

    _log("[3/6] small students (digits-small, ~4x fewer parameters) from scratch on the pairs")
    t0 = time.perf_counter()
    pairs = student_overrides(out / "pairs")
    reflow_steps = _budget(1000, scale)
    plain_ckpt = train_stage(out, "student-reflow", [*pairs, "objective={name: reflow}",
                                                     f"train.steps={reflow_steps}"], seed=seed)
    anneal = f"objective={{name: reflow, anneal: cos_{_budget(400, scale)}}}"
    anneal_ckpt = train_stage(out, "student-annealing", [*pairs, anneal,
                                                         f"train.steps={reflow_steps}"], seed=seed)
    lap("students", t0)

    _log("[4/6] one-step distillation of the Annealing-Reflow student: plain vs Flow-Guided")
    t0 = time.perf_counter()
    distill = [*pairs, f"train.init_from={anneal_ckpt}", f"train.steps={_budget(500, scale)}", "optim.lr=5e-4",
               "optim.warmup=50"]
    distill_ckpt = train_stage(out, "student-distill", [*distill, "objective={name: distill}"], seed=seed)
    fgd_ckpt = train_stage(out, "student-fgd", [*distill, f"objective={{name: fgd, teacher: '{anneal_ckpt}'}}"],
                           seed=seed)
    lap("distillation", t0)

    _log(f"[5/6] scoring {N_EVAL} samples per row from the same noise")
    t0 = time.perf_counter()
    z = torch.randn(N_EVAL, *SHAPE, generator=torch.Generator().manual_seed(2024 + seed))
    models = {"1-RF teacher": load_model(teacher_ckpt), "2-RF student (reflow)": load_model(plain_ckpt),
              "2-RF student (annealing)": load_model(anneal_ckpt),
              "distilled (plain)": load_model(distill_ckpt), "distilled (FGD)": load_model(fgd_ckpt)}
    plan = {"1-RF teacher": [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 16), ("rk45", None)],
            "2-RF student (reflow)": [("euler", 1), ("euler", 2), ("euler", 4)],
            "2-RF student (annealing)": [("euler", 1), ("euler", 2), ("euler", 4)],
            "distilled (plain)": [("euler", 1)], "distilled (FGD)": [("euler", 1)]}
    rows, samples = [], {}
    for method, solvers in plan.items():
        for solver, steps in solvers:
            row, x = _score(method, models[method], z, solver, steps)
            rows.append(row)
            samples[f"{method}, {row['solver']}: NFE {row['NFE']}, FD {row['digits FD']:.1f}"] = x
    straight = {m: straightness(cfg_velocity(models[m], None), z[:256], steps=32)
                for m in ("1-RF teacher", "2-RF student (reflow)", "2-RF student (annealing)")}
    lap("evaluation", t0)

    _log("[6/6] exporting the FGD one-step generator to ONNX and validating it with ONNX Runtime")
    t0 = time.perf_counter()
    exported = _export_onnx(models["distilled (FGD)"], z, out / "student_fgd.onnx")
    if exported is not None:
        rows.append(exported)
    lap("export", t0)

    checks = {claim: _fd(rows, *better) < _fd(rows, *worse) for claim, better, worse in ORDERINGS}
    checks["2-RF is straighter than 1-RF"] = straight["2-RF student (annealing)"] < straight["1-RF teacher"]
    checks["more Euler steps beat one step (1-RF)"] = all(
        r["digits FD"] < _fd(rows, "1-RF teacher", "euler 1") for r in rows
        if r["method"] == "1-RF teacher" and r["NFE"] > 1)
    if exported is not None:
        checks["ONNX export validates against PyTorch"] = exported.pop("validation")
    _overview(samples, out / "samples.png")
    for name, key in (("fgd", "distilled (FGD)"), ("teacher_rk45", "1-RF teacher")):
        label = next(k for k in samples if k.startswith(key + (", euler 1" if name == "fgd" else ", rk45")))
        save_grid(samples[label][:64], out / f"grid_{name}.png", upscale=4)
    _plots(rows, out)
    seconds["total"] = time.perf_counter() - t_start
    result = {"scale": scale, "seed": seed, "rows": rows, "straightness": straight, "checks": checks,
              "pairs": {"count": manifest["count"], "mean_nfe": manifest["mean_nfe"]},
              "seconds": seconds}
    atomic_write_json(out / "results.json", result)

    print()
    print(f"SlimFlow on digits, {N_EVAL} samples per row (digits FD: lower is better; "
          "latency: one image, this CPU)")
    print(format_table(rows, ["method", "solver", "NFE", "digits FD", "coverage", "latency ms (b=1)",
                              "params (M)"]))
    print()
    for m, v in straight.items():
        print(f"straightness S of {m}: {v:.4f}")
    for name, ok in checks.items():
        print(f"[{'x' if ok else ' '}] {name}")
    print(f"wrote {out}/samples.png, grid_fgd.png, grid_teacher_rk45.png, latency_vs_nfe.png, "
          f"student_fgd.onnx, results.json in {seconds['total']:.0f}s")
    return result


def over_seeds(run: Callable[..., dict[str, Any]], out: Path, seeds: Sequence[int], scale: float,
               keys: Sequence[str]) -> dict[str, Any]:
    """``run(out/seed-S, scale, seed=S)`` for each seed; its rows as mean ± sd (``aggregate_rows``:
    ``keys`` name a row), each check as the number of seeds in which it holds, and every run."""
    runs = [run(out / f"seed-{s}", scale, seed=s) for s in seeds]
    return {"seeds": list(seeds), "scale": scale, "rows": aggregate_rows([r["rows"] for r in runs], keys),
            "checks": {name: sum(bool(r["checks"][name]) for r in runs) for name in runs[0]["checks"]},
            "per_seed": {str(s): r for s, r in zip(seeds, runs)}}


def paired_orderings(runs: Sequence[dict[str, Any]], orderings: Sequence[tuple]) -> list[dict[str, Any]]:
    """For each ``(claim, better, worse)`` the paired gain (worse − better FD, mean ± sd over seeds:
    the seeds share nothing, but both methods of a seed share its teacher and pairs), in how many
    seeds it holds, whether it holds beyond one sd of that gain, and whether the two methods'
    mean ± sd intervals are apart."""
    table = []
    for claim, better, worse in orderings:
        b, w = ([_fd(run["rows"], *m) for run in runs] for m in (better, worse))
        gain, (bm, bs), (wm, wsd) = mean_sd([y - x for x, y in zip(b, w)]), mean_sd(b), mean_sd(w)
        table.append({"claim": claim, "better": f"{bm:.1f} ± {bs:.1f}", "worse": f"{wm:.1f} ± {wsd:.1f}",
                      "paired gain": f"{gain[0]:.2f} ± {gain[1]:.2f}",
                      "seeds holding": f"{sum(y > x for x, y in zip(b, w))}/{len(runs)}",
                      "beyond one sd": gain[0] > gain[1], "intervals apart": bm + bs < wm - wsd})
    return table


def _report_seeds(out: Path, result: dict[str, Any], title: str, columns: Sequence[str],
                  orderings: Sequence[tuple] = ()) -> None:
    """Add the paired ``orderings`` to ``result``, write ``out/results-seeds.json``, print the tables."""
    if orderings:
        result["orderings"] = paired_orderings(list(result["per_seed"].values()), orderings)
    atomic_write_json(out / "results-seeds.json", result)
    print()
    print(f"{title} over seeds {result['seeds']} (mean ± sd)")
    print(format_table(result["rows"], columns))
    for name, held in result["checks"].items():
        print(f"[{held}/{len(result['seeds'])}] {name}")
    if orderings:
        print()
        print(format_table(result["orderings"], ["claim", "better", "worse", "paired gain", "seeds holding",
                                                 "beyond one sd", "intervals apart"]))


def run_seeds(out: Path, seeds: Sequence[int], scale: float = 1.0) -> dict[str, Any]:
    """The SlimFlow pipeline once per seed (``out/seed-S``): rows as mean ± sd, the paper's
    orderings as paired gains (:func:`paired_orderings`), straightness as mean ± sd."""
    result = over_seeds(run_demo, out, seeds, scale, ("method", "solver", "params (M)"))
    runs = list(result["per_seed"].values())
    result["straightness"] = {m: mean_sd([run["straightness"][m] for run in runs]) for m in runs[0]["straightness"]}
    _report_seeds(out, result, f"SlimFlow on digits ({N_EVAL} samples per row and seed)",
                  ["method", "solver", "NFE", "digits FD", "coverage", "latency ms (b=1)", "params (M)"], ORDERINGS)
    for m, (mean, sd) in result["straightness"].items():
        print(f"straightness S of {m}: {mean:.4f} ± {sd:.4f}")
    print(f"wrote {out}/results-seeds.json (each seed's run under {out}/seed-S)")
    return result


CFG_PAIRS = 2.0  # CFG scale of the conditional teacher when it generates pairs
# α of the 2-RF that guides the distillation. InstaFlow uses 1.5 on SD; here the pairs already
# carry α = 2 and more guidance over-guides (measured FGD at α = 1.5: one-step FD 53.0 vs 34.8).
CFG_DISTILL = 1.0
#: The conditional run's orderings on digits FD, rows named by (method, solver, CFG α).
COND_ORDERINGS = [
    ("one-step student beats the teacher's one step (FD)", ("one-step (FGD)", "euler 1", 1.0),
     ("1-RF teacher", "euler 1", CFG_PAIRS)),
    ("distilled one step beats the 2-RF's one step (FD)", ("one-step (FGD)", "euler 1", 1.0), ("2-RF", "euler 1", 1.0)),
    ("one step beats the CFG teacher's RK45 (FD)", ("one-step (FGD)", "euler 1", 1.0),
     ("1-RF teacher", "rk45", CFG_PAIRS)),
]


def run_conditional(out: Path, scale: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """InstaFlow on class-conditioned digits (condition = label; text embeddings take the same path);
    ``seed`` seeds every training run, the pairs and the scoring noise."""
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cond = ["model.num_classes=10", "train.sample_every=0"]
    _log("[cond 1/4] class-conditional 1-RF teacher on digits (10 % condition dropout)")
    teacher_ckpt = train_stage(out, "teacher-1rf", [*cond, "objective={name: rf, cond_drop: 0.1}",
                                                    f"train.steps={_budget(1200, scale)}"], seed=seed)
    _log(f"[cond 2/4] teacher pairs with CFG α = {CFG_PAIRS} (RK45, labels stored in the shards)")
    teacher = FlowTeacher.from_checkpoint(teacher_ckpt, solver="rk45", rtol=1e-3, atol=1e-3, cfg_scale=CFG_PAIRS)
    manifest = generate_pairs(teacher, out / "pairs", _budget(2000, scale), SHAPE, shard_size=500,
                              batch_size=500, seed=seed)
    _log(f"  {manifest['count']} pairs, mean NFE {manifest['mean_nfe']:.1f}")
    pairs = [*cond, "data.name=pairs", f"data.root={out / 'pairs'}", "optim.warmup=50"]
    _log("[cond 3/4] 2-RF from the teacher (reflow, 10 % condition dropout)")
    reflow_ckpt = train_stage(out, "2rf", [*pairs, "objective={name: reflow, cond_drop: 0.1}",
                                           f"train.init_from={teacher_ckpt}", f"train.steps={_budget(600, scale)}",
                                           "optim.lr=1e-3"], seed=seed)
    _log(f"[cond 4/4] one-step Flow-Guided Distillation guided by the 2-RF (α = {CFG_DISTILL})")
    fgd = f"objective={{name: fgd, teacher: '{reflow_ckpt}', cfg_scale: {CFG_DISTILL}}}"
    fgd_ckpt = train_stage(out, "one-step", [*pairs, f"train.init_from={reflow_ckpt}",
                                             f"train.steps={_budget(500, scale)}", "optim.lr=5e-4", fgd],
                             seed=seed)

    _log(f"scoring {N_EVAL} samples per row, labels 0..9 in turn, same noise")
    z = torch.randn(N_EVAL, *SHAPE, generator=torch.Generator().manual_seed(2024 + seed))
    labels = torch.arange(N_EVAL) % 10
    plan = [("1-RF teacher", teacher_ckpt, "rk45", None, CFG_PAIRS),
            ("1-RF teacher", teacher_ckpt, "euler", 1, CFG_PAIRS),
            ("2-RF", reflow_ckpt, "euler", 1, 1.0), ("2-RF", reflow_ckpt, "euler", 1, 1.5),
            ("2-RF", reflow_ckpt, "euler", 4, 1.0), ("one-step (FGD)", fgd_ckpt, "euler", 1, 1.0)]
    rows, samples = [], {}
    for method, ckpt, solver, steps, alpha in plan:
        row, x = _score(method, load_model(ckpt), z, solver, steps, labels, alpha)
        rows.append(row)
        samples[f"{method}, {row['solver']}, α {alpha}: accuracy {row['label accuracy']:.2f}, "
                f"FD {row['digits FD']:.1f}"] = x[:100]
    one_step = rows[-1]
    checks = {"one-step samples show the requested digit (≥ 80 %)": one_step["label accuracy"] >= 0.8,
              **{claim: _fd(rows, *better) < _fd(rows, *worse) for claim, better, worse in COND_ORDERINGS}}
    _overview(samples, out / "samples.png", per_row=20)
    save_grid(samples[next(k for k in samples if k.startswith("one-step"))], out / "grid_one_step.png",
              nrow=10, upscale=4)  # column j shows digit j
    result = {"seed": seed, "rows": rows, "checks": checks, "seconds": time.perf_counter() - t_start,
              "pairs": {"count": manifest["count"], "mean_nfe": manifest["mean_nfe"], "cfg_scale": CFG_PAIRS}}
    atomic_write_json(out / "results.json", result)
    print()
    print(f"InstaFlow on class-conditioned digits, {N_EVAL} samples per row (label accuracy by the digits "
          "classifier; chance is 0.1)")
    print(format_table(rows, ["method", "solver", "CFG α", "NFE", "label accuracy", "digits FD", "coverage",
                              "latency ms (b=1)", "params (M)"]))
    for name, ok in checks.items():
        print(f"[{'x' if ok else ' '}] {name}")
    print(f"wrote {out}/samples.png, grid_one_step.png, results.json in {result['seconds']:.0f}s")
    return result


def run_conditional_seeds(out: Path, seeds: Sequence[int], scale: float = 1.0) -> dict[str, Any]:
    """:func:`run_conditional` once per seed (``out/seed-S``): rows as mean ± sd, its orderings as
    paired gains."""
    result = over_seeds(run_conditional, out, seeds, scale, ("method", "solver", "CFG α", "params (M)"))
    _report_seeds(out, result, f"InstaFlow on class-conditioned digits ({N_EVAL} samples per row and seed)",
                  ["method", "solver", "CFG α", "NFE", "label accuracy", "digits FD", "coverage"], COND_ORDERINGS)
    return result


#: OFTSR ×4 on photographs: 8×8 → 32×32 RGB crops; a small conditional UNet (~0.4M).
SR_MODEL = ["model.arch=unet", "model.in_channels=3", "model.cond_channels=3", "model.resolution=32",
            "model.channels=16", "model.ch_mult=[1,2,2]", "model.num_res_blocks=1", "model.attn_resolutions=[]"]
N_SR_EVAL = 256
SR_TEACHER_STEPS, SR_STUDENT_STEPS = 700, 400
SR_CLOSE = "one step at τ≈1 within 0.5 dB of the teacher's 32 steps"
SR_STRIP = {"lq": "bicubic", "tau=0.01": "τ = 0.01", "tau=0.5": "τ = 0.5", "tau=0.99": "τ = 0.99",
            "teacher": "teacher, 32 steps", "hr": "ground truth"}


def run_sr(out: Path, scale: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """OFTSR ×4 on photographs: teacher flow and one-step student trained on random crops of
    scikit-image's photographs, τ sweep on crops of held-out photographs; ``seed`` seeds both
    training runs and the sweep's noise (the held-out crops are the same for every seed)."""
    from fastflow.data import build_dataset
    from fastflow.objectives.lpips_distance import ENV as LPIPS_ENV

    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    lpips = None  # built first: a bad backbone file fails before minutes of training, not after
    if os.environ.get(LPIPS_ENV):
        from fastflow.objectives.lpips_distance import LPIPSDistance

        lpips = LPIPSDistance()
    data = {"name": "sr", "source": "photos", "scale": 4}
    common = [*SR_MODEL, f"data={data}", "optim.lr=2e-3", "optim.warmup=50", "train.ema_rate=0.999",
              "train.sample_every=0", "train.sample_n=16"]
    _log("[sr 1/3] SR teacher flow from x0 = sqrt(1 − σp²)·lq + σp·ε (photo crops ×4, σp = 0.1)")
    teacher_ckpt = train_stage(out, "teacher", [*common, "objective={name: sr}", "train.batch_size=32",
                                                f"train.steps={_budget(SR_TEACHER_STEPS, scale)}"], config=None,
                               seed=seed)
    _log("[sr 2/3] OFTSR one-step distillation (bootstrap + boundary + alignment)")
    # a student step costs 4 teacher calls and a 3× batch: batch 16 (as fast per step as 32 on 1 thread
    # here) and more steps close the gap to the teacher at τ ≈ 1 (200 steps at batch 32: 0.74 dB)
    student_ckpt = train_stage(out, "one-step", [*common, f"objective={{name: oftsr, teacher: '{teacher_ckpt}'}}",
                                                 "train.batch_size=16",
                                                 f"train.init_from={teacher_ckpt}",
                                                 f"train.steps={_budget(SR_STUDENT_STEPS, scale)}"], config=None,
                               seed=seed)
    _log(f"[sr 3/3] τ sweep on {N_SR_EVAL} crops of held-out photographs")
    held_out = {"name": "sr", "source": {"name": "photos", "split": "eval", "count": N_SR_EVAL}, "scale": 4}
    b = build_dataset(held_out).get(torch.arange(N_SR_EVAL))
    if lpips is None:
        _log(f"  LPIPS skipped: set {LPIPS_ENV} to a local torchvision vgg16 state dict to add it")
    rows, samples = tau_sweep(load_model(student_ckpt), b.x, b.image, 0.1, teacher=load_model(teacher_ckpt),
                              seed=seed, lpips=lpips)
    save_sweep_plot(rows, str(out / "tau_sweep.png"))
    _sr_strip({SR_STRIP[k]: samples[k] for k in SR_STRIP}, out / "strip.png")
    sweep = [r for r in rows if r["tau"] is not None]
    psnr, hf = [r["psnr"] for r in sweep], [r["hf_ratio"] for r in sweep]
    checks = {"PSNR falls as τ rises": all(a > b for a, b in zip(psnr, psnr[1:])),
              "high-frequency energy rises with τ": all(a < b for a, b in zip(hf, hf[1:])),
              SR_CLOSE: abs(psnr[-1] - rows[-1]["psnr"]) < 0.5}
    result = {"seed": seed, "rows": rows, "checks": checks, "seconds": time.perf_counter() - t_start}
    atomic_write_json(out / "results.json", result)
    print()
    print(f"OFTSR ×4 on {N_SR_EVAL} crops of held-out photographs (PSNR on [−1, 1]; HF ratio = "
          "high-frequency energy of output / of HR)")
    print(format_table(rows, ["method", "tau", "NFE", "psnr", "ssim", "hf_ratio", *(["lpips"] if lpips else [])]))
    for name, ok in checks.items():
        print(f"[{'x' if ok else ' '}] {name}")
    print(f"wrote {out}/tau_sweep.png, strip.png, results.json in {result['seconds']:.0f}s")
    return result


def run_sr_seeds(out: Path, seeds: Sequence[int], scale: float = 1.0) -> dict[str, Any]:
    """:func:`run_sr` once per seed (``out/seed-S``): the τ sweep as mean ± sd (also plotted with
    error bars) and the paired PSNR gap of the τ ≈ 1 student to the teacher."""
    result = over_seeds(run_sr, out, seeds, scale, ("method", "tau", "NFE"))
    gap = mean_sd([r["rows"][-2]["psnr"] - r["rows"][-1]["psnr"] for r in result["per_seed"].values()])
    result["student τ≈1 − teacher PSNR (dB)"] = gap
    save_sweep_plot(result["rows"], str(out / "tau_sweep.png"))
    metrics = ["psnr", "ssim", "hf_ratio", *(["lpips"] if "lpips" in result["rows"][0] else [])]
    _report_seeds(out, result, f"OFTSR ×4 on {N_SR_EVAL} crops of held-out photographs",
                  ["method", "tau", "NFE", *metrics])
    print(f"one step at τ≈1 − teacher: {gap[0]:+.2f} ± {gap[1]:.2f} dB (paired; |mean| + sd "
          f"{'<' if abs(gap[0]) + gap[1] < 0.5 else '≥'} 0.5 dB)")
    print(f"wrote {out}/tau_sweep.png, results-seeds.json (each seed's run, strip included, under {out}/seed-S)")
    return result


def _sr_strip(columns: dict[str, torch.Tensor], path: Path, n: int = 6) -> None:
    """``n`` crops, one per row; a column per method (nearest-neighbour enlarged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastflow.utils.images import to_uint8

    fig, axes = plt.subplots(n, len(columns), figsize=(1.3 * len(columns), 1.3 * n + 0.3), dpi=110)
    for j, (label, x) in enumerate(columns.items()):
        imgs = to_uint8(x[:n])
        for i in range(n):
            axes[i, j].imshow(imgs[i], interpolation="nearest")
            axes[i, j].axis("off")
        axes[0, j].set_title(label, fontsize=8)
    fig.tight_layout(pad=0.3)
    save_figure(fig, path)
