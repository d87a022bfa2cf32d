"""The OFTSR τ sweep: one-step student quality at several knob values against the degraded
input and the teacher's multi-step result, on fixed noise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.flow.sample import generate
from fastflow.metrics.sr import sr_scores
from fastflow.flow.sr import sr_one_step, sr_start
from fastflow.utils.images import save_figure

TAUS = (0.01, 0.25, 0.5, 0.75, 0.99)


@torch.no_grad()
def tau_sweep(student: nn.Module, hr: Tensor, lq: Tensor, sigma_p: float, taus: Sequence[float] = TAUS,
              teacher: nn.Module | None = None, teacher_steps: int = 32, seed: int = 0,
              lpips: Callable[[Tensor, Tensor], Tensor] | None = None) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """Rows ``{"method", "tau", "NFE", "psnr", "ssim", "hf_ratio"[, "lpips"]}`` and the sample
    batches; ``lpips(a, b) → [B]`` adds the mean LPIPS to each row."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(lq.shape, generator=g).to(lq.device)

    def scores(x: Tensor) -> dict[str, float]:
        return {**sr_scores(x, hr), **({"lpips": float(lpips(x, hr).mean())} if lpips is not None else {})}

    rows, samples = [{"method": "bicubic input (lq)", "tau": None, "NFE": 0, **scores(lq)}], {"lq": lq}
    for tau in taus:
        x = sr_one_step(student, lq, tau, sigma_p, noise)
        rows.append({"method": "OFTSR one step", "tau": tau, "NFE": 1, **scores(x)})
        samples[f"tau={tau}"] = x
    if teacher is not None:
        x0 = sr_start(lq, sigma_p, noise)
        x = generate(teacher, x0, "euler", teacher_steps, cond={"image": lq}, t0=0.0).x
        rows.append({"method": f"teacher Euler {teacher_steps}", "tau": None, "NFE": teacher_steps, **scores(x)})
        samples["teacher"] = x
    samples["hr"] = hr
    return rows, samples


def save_sweep_plot(rows: list[dict[str, Any]], path: str) -> None:
    """PSNR and HF ratio against τ, the τ-free rows (input, teacher) as lines; a ``KEY_sd`` (rows
    averaged over seeds) draws error bars / bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in rows if r["tau"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    for ax, key, label in ((axes[0], "psnr", "PSNR (dB) — fidelity"), (axes[1], "hf_ratio", "HF energy ratio — realism")):
        ax.errorbar([r["tau"] for r in sweep], [r[key] for r in sweep], [r.get(f"{key}_sd", 0.0) for r in sweep],
                    fmt="o-", capsize=3, label="OFTSR one step")
        for i, r in enumerate(x for x in rows if x["tau"] is None):
            ax.axhline(r[key], ls="--", color=f"C{i + 1}", label=r["method"])
            if r.get(f"{key}_sd"):
                ax.axhspan(r[key] - r[f"{key}_sd"], r[key] + r[f"{key}_sd"], color=f"C{i + 1}", alpha=0.15)
        ax.set(xlabel="τ", ylabel=label)
    axes[1].axhline(1.0, color="k", lw=0.5)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
