"""The embedded end-to-end demo (``make demo`` / ``fastflow demo``), CPU only, minutes.

1. Train a small 1-RF teacher on scikit-learn's digits (``configs/digits.yaml``); resumes if
   interrupted and skips training when the run is complete.
2. Sample it with Euler 1/2/4/8/16 steps and adaptive RK45 from the same noise.
3. Score each with the built-in digits metric (FD on classifier features, class coverage) and
   report NFE, wall time and the teacher's straightness; write PNG grids, a quality-vs-NFE plot
   and ``results.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastflow.flow import generate, straightness
from fastflow.flow.guidance import cfg_velocity
from fastflow.metrics import digits_scores
from fastflow.models import load_model
from fastflow.train import load_config, train
from fastflow.train.config import PACKAGED_CONFIGS
from fastflow.train.state import latest_checkpoint
from fastflow.utils.images import save_grid
from fastflow.utils.io import atomic_write_json
from fastflow.utils.table import format_table

SOLVERS: list[tuple[str, int | None]] = [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8),
                                         ("euler", 16), ("rk45", None)]
N_EVAL = 1000


def evaluate_solvers(model: torch.nn.Module, z: torch.Tensor,
                     solvers: list[tuple[str, int | None]] = SOLVERS,
                     rk45_tol: float = 1e-3) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Quality and cost of each solver from the same noise ``z``."""
    rows, samples = [], {}
    for name, steps in solvers:
        label = f"{name} {steps}" if steps else name
        kwargs = {"rtol": rk45_tol, "atol": rk45_tol} if name == "rk45" else {}
        t0 = time.perf_counter()
        res = generate(model, z, name, steps, **kwargs)
        wall = time.perf_counter() - t0
        nfe = float(res.sample_nfe.float().mean()) if res.sample_nfe is not None else res.nfe
        rows.append({"solver": label, "NFE": round(nfe, 1), **digits_scores(res.x),
                     "ms/img": 1e3 * wall / len(z)})
        samples[label] = res.x
        print(f"  {label:9s} NFE {nfe:6.1f}  FD {rows[-1]['fd']:8.2f}  ({wall:.1f}s)", flush=True)
    return rows, samples


def save_overview(samples: dict[str, torch.Tensor], rows: list[dict[str, Any]], path: Path,
                  per_row: int = 16) -> None:
    """One PNG: a row of samples per solver, titled with its NFE and FD."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastflow.utils.images import to_uint8

    fig, axes = plt.subplots(len(samples), 1, figsize=(per_row * 0.6, len(samples) * 0.95), dpi=110)
    for ax, (label, x), row in zip(axes, samples.items(), rows):
        imgs = np.pad(to_uint8(x[:per_row])[..., 0], ((0, 0), (0, 0), (1, 1)), constant_values=255)
        ax.imshow(np.concatenate(list(imgs), axis=1), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{label}: NFE {row['NFE']}, digits FD {row['fd']:.1f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_quality_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=110)
    eul = [r for r in rows if r["solver"].startswith("euler")]
    ax.plot([r["NFE"] for r in eul], [r["fd"] for r in eul], "o-", label="Euler")
    for r in rows:
        if r["solver"] == "rk45":
            ax.plot([r["NFE"]], [r["fd"]], "s", label="RK45")
    ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="digits FD (lower is better)",
           title="1-RF teacher on digits: quality vs NFE")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_demo(out: Path, steps: int | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    overrides = [f"out_dir={out / 'teacher'}", "train.tensorboard=false"]
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    cfg = load_config(PACKAGED_CONFIGS / "digits.yaml", overrides)
    print(f"[1/3] training the 1-RF teacher on digits ({cfg.train.steps} steps, {cfg.model})", flush=True)
    run = train(cfg, resume=True)
    ckpt = latest_checkpoint(run)
    model = load_model(ckpt)
    t_train = time.perf_counter() - t_start

    print(f"[2/3] sampling {N_EVAL} digits per solver and scoring them", flush=True)
    z = torch.randn(N_EVAL, *(1, 16, 16), generator=torch.Generator().manual_seed(2024))
    rows, samples = evaluate_solvers(model, z)
    s = straightness(cfg_velocity(model, None), z[:256], steps=32)

    print("[3/3] writing the report", flush=True)
    save_overview(samples, rows, out / "samples.png")
    for label in ("euler 1", "euler 16", "rk45"):
        save_grid(samples[label][:64], out / f"grid_{label.replace(' ', '')}.png", upscale=4)
    save_quality_plot(rows, out / "quality_vs_nfe.png")
    table = format_table(rows, ["solver", "NFE", "fd", "coverage", "confidence", "ms/img"])
    one = rows[0]["fd"]
    better = {r["solver"]: r["fd"] < one for r in rows[1:]}
    result = {"checkpoint": str(ckpt), "train_steps": cfg.train.steps, "rows": rows,
              "straightness": s, "better_than_one_step": better,
              "seconds": {"train": t_train, "total": time.perf_counter() - t_start}}
    atomic_write_json(out / "results.json", result)
    print()
    print(f"1-RF teacher on digits ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{cfg.train.steps} steps), {N_EVAL} samples per row; digits FD: lower is better")
    print(table)
    print(f"straightness S of the teacher: {s:.4f} (0 = straight paths)")
    print(f"more Euler steps beat one step: {all(v for k, v in better.items() if k.startswith('euler'))}")
    print(f"wrote {out}/samples.png, grid_rk45.png, grid_euler16.png, grid_euler1.png, "
          f"quality_vs_nfe.png, results.json in {result['seconds']['total']:.0f}s")
    return result
