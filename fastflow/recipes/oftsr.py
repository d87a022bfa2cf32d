"""OFTSR ×4 on photographs, as named stages (random crops of scikit-image's bundled photographs;
evaluation on crops of held-out photographs), and OFTSR for a trained checkpoint.

1. :func:`train_teacher` — the SR teacher flow from ``x0 = sqrt(1 − σp²)·lq + σp·ε`` to HR.
2. :func:`distill` — the one-step student (bootstrap + boundary + alignment losses).
3. :func:`sweep` — the τ sweep (PSNR falls, high-frequency energy rises) against the bicubic
   input and the teacher's 32 Euler steps.

For a checkpoint: :func:`sweep_checkpoint` (``fastflow eval``) and :func:`super_resolve`
(``fastflow sr``); the start state and one-step map are :mod:`fastflow.flow.sr`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from fastflow.data import build_dataset
from fastflow.flow.sr import DEFAULT_SIGMA_P
from fastflow.metrics.evaluate import mean_sd
from fastflow.metrics.sr_eval import save_sweep_plot, tau_sweep
from fastflow.models import load_model
from fastflow.objectives.lpips_distance import ENV, LPIPSDistance
from fastflow.recipes.report import print_checks, report_seeds, strip_figure
from fastflow.recipes.stages import EAGER, Execution, budget, log, over_seeds, train_stage
from fastflow.utils.io import atomic_write_json
from fastflow.utils.table import format_table

#: 8×8 → 32×32 RGB crops; a small conditional UNet (~0.4M).
MODEL = ["model.arch=unet", "model.in_channels=3", "model.cond_channels=3", "model.resolution=32",
         "model.channels=16", "model.ch_mult=[1,2,2]", "model.num_res_blocks=1", "model.attn_resolutions=[]"]
N_EVAL = 256
TEACHER_STEPS, STUDENT_STEPS = 700, 400
CLOSE = "one step at τ≈1 within 0.5 dB of the teacher's 32 steps"
STRIP = {"lq": "bicubic", "tau=0.01": "τ = 0.01", "tau=0.5": "τ = 0.5", "tau=0.99": "τ = 0.99",
         "teacher": "teacher, 32 steps", "hr": "ground truth"}
DATA = {"name": "sr", "source": "photos", "scale": 4}
COMMON = [*MODEL, f"data={DATA}", "optim.lr=2e-3", "optim.warmup=50", "train.ema_rate=0.999",
          "train.sample_every=0", "train.sample_n=16"]


def lpips_distance() -> Any:
    """LPIPS when ``FASTFLOW_LPIPS_BACKBONE`` names a local backbone (built first: a bad file fails
    before minutes of training), else None."""
    return LPIPSDistance() if os.environ.get(ENV) else None


def train_teacher(out: Path, scale: float, seed: int, ex: Execution = EAGER) -> Path:
    log(f"[sr 1/3] SR teacher flow from x0 = sqrt(1 − σp²)·lq + σp·ε (photo crops ×4, σp = {DEFAULT_SIGMA_P})")
    return train_stage(out, "teacher", [*COMMON, "objective={name: sr}", "train.batch_size=32",
                                        f"train.steps={budget(TEACHER_STEPS, scale)}"], config=None, seed=seed,
                       execution=ex)


def distill(out: Path, teacher: Path, scale: float, seed: int, ex: Execution = EAGER) -> Path:
    log("[sr 2/3] OFTSR one-step distillation (bootstrap + boundary + alignment)")
    # a student step costs 4 teacher calls and a 3× batch: batch 16 (as fast per step as 32 on 1 thread
    # here) and more steps close the gap to the teacher at τ ≈ 1 (200 steps at batch 32: 0.74 dB)
    return train_stage(out, "one-step", [*COMMON, f"objective={{name: oftsr, teacher: '{teacher}'}}",
                                         "train.batch_size=16", f"train.init_from={teacher}",
                                         f"train.steps={budget(STUDENT_STEPS, scale)}"], config=None, seed=seed,
                       execution=ex)


def sweep(student: Path, teacher: Path, seed: int, lpips: Any = None) -> tuple[list[dict[str, Any]],
                                                                               dict[str, torch.Tensor]]:
    """The τ sweep on :data:`N_EVAL` crops of held-out photographs (the same crops for every seed)."""
    log(f"[sr 3/3] τ sweep on {N_EVAL} crops of held-out photographs")
    held_out = {**DATA, "source": {"name": "photos", "split": "eval", "count": N_EVAL}}
    b = build_dataset(held_out).get(torch.arange(N_EVAL))
    if lpips is None:
        log(f"  LPIPS skipped: set {ENV} to a local torchvision vgg16 state dict to add it")
    return tau_sweep(load_model(student), b.x, b.image, DEFAULT_SIGMA_P, teacher=load_model(teacher), seed=seed,
                     lpips=lpips)


def _row(rows: Sequence[dict[str, Any]], method: str) -> dict[str, Any]:
    return next(r for r in rows if r["method"].startswith(method))


def checks_of(rows: Sequence[dict[str, Any]]) -> dict[str, bool]:
    sweep_rows = [r for r in rows if r["tau"] is not None]
    psnr, hf = [r["psnr"] for r in sweep_rows], [r["hf_ratio"] for r in sweep_rows]
    return {"PSNR falls as τ rises": all(a > b for a, b in pairwise(psnr)),
            "high-frequency energy rises with τ": all(a < b for a, b in pairwise(hf)),
            CLOSE: abs(psnr[-1] - _row(rows, "teacher")["psnr"]) < 0.5}


def run(out: Path, scale: float = 1.0, seed: int = 0, ex: Execution = EAGER) -> dict[str, Any]:
    """The whole pipeline; ``seed`` seeds both training runs and the sweep's noise."""
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    lpips = lpips_distance()
    teacher = train_teacher(out, scale, seed, ex)
    student = distill(out, teacher, scale, seed, ex)
    rows, samples = sweep(student, teacher, seed, lpips)
    save_sweep_plot(rows, str(out / "tau_sweep.png"))
    strip_figure({STRIP[k]: samples[k] for k in STRIP}, out / "strip.png")
    checks = checks_of(rows)
    result = {"seed": seed, "rows": rows, "checks": checks, "seconds": time.perf_counter() - t_start}
    atomic_write_json(out / "results.json", result)
    print()
    print(f"OFTSR ×4 on {N_EVAL} crops of held-out photographs (PSNR on [−1, 1]; HF ratio = "
          "high-frequency energy of output / of HR)")
    print(format_table(rows, ["method", "tau", "NFE", "psnr", "ssim", "hf_ratio", *(["lpips"] if lpips else [])]))
    print_checks(checks)
    print(f"wrote {out}/tau_sweep.png, strip.png, results.json in {result['seconds']:.0f}s")
    return result


def teacher_gap(rows: Sequence[dict[str, Any]]) -> float:
    """PSNR of the one-step student at the largest τ minus the teacher's."""
    return (
        max((r for r in rows if r["tau"] is not None), key=lambda r: r["tau"])["psnr"] - _row(rows, "teacher")["psnr"]
    )


def run_seeds(out: Path, seeds: Sequence[int], scale: float = 1.0, jobs: int = 1,
              runs: Sequence[dict[str, Any]] | None = None, ex: Execution = EAGER) -> dict[str, Any]:
    """:func:`run` once per seed (``out/seed-S``): the τ sweep as mean ± sd (also plotted with
    error bars) and the paired PSNR gap of the τ ≈ 1 student to the teacher."""
    result = over_seeds(partial(run, ex=ex), out, seeds, scale, ("method", "tau", "NFE"), jobs, runs)
    gap = mean_sd([teacher_gap(r["rows"]) for r in result["per_seed"].values()])
    result["student τ≈1 − teacher PSNR (dB)"] = gap
    save_sweep_plot(result["rows"], str(out / "tau_sweep.png"))
    metrics = ["psnr", "ssim", "hf_ratio", *(["lpips"] if "lpips" in result["rows"][0] else [])]
    report_seeds(out, result, f"OFTSR ×4 on {N_EVAL} crops of held-out photographs", ["method", "tau", "NFE", *metrics])
    print(f"one step at τ≈1 − teacher: {gap[0]:+.2f} ± {gap[1]:.2f} dB (paired; |mean| + sd "
          f"{'<' if abs(gap[0]) + gap[1] < 0.5 else '≥'} 0.5 dB)")
    print(f"wrote {out}/tau_sweep.png, results-seeds.json (each seed's run, strip included, under {out}/seed-S)")
    return result
