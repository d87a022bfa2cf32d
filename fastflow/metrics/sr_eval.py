"""OFTSR as a product: the τ sweep (one-step student quality at several knob values against the
degraded input and the teacher's multi-step result, on fixed noise; ``fastflow eval``) and one-step
super-resolution of given images (``fastflow sr``). The demo's recipe (``recipes/oftsr.py``) trains
the models these take."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow.data import build_dataset
from fastflow.errors import ConfigError
from fastflow.flow.sample import generate
from fastflow.flow.sr import sr_one_step, sr_start
from fastflow.fused import apply as apply_fused
from fastflow.metrics.sr import sr_scores
from fastflow.models import load_model
from fastflow.models.checkpoint import CheckpointRecord
from fastflow.utils.images import pyplot, save_figure

TAUS = (0.01, 0.25, 0.5, 0.75, 0.99)


@torch.no_grad()
def tau_sweep(
    student: nn.Module,
    hr: Tensor,
    lq: Tensor,
    sigma_p: float,
    taus: Sequence[float] = TAUS,
    teacher: nn.Module | None = None,
    teacher_steps: int = 32,
    seed: int = 0,
    lpips: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
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
    plt = pyplot()

    sweep = [r for r in rows if r["tau"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    for ax, key, label in (
        (axes[0], "psnr", "PSNR (dB) — fidelity"),
        (axes[1], "hf_ratio", "HF energy ratio — realism"),
    ):
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


def sweep_checkpoint(record: CheckpointRecord, model: nn.Module, n: int, taus: Sequence[float],
                     device: torch.device, fused: str = "auto") -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """The τ sweep of an OFTSR student on the first ``n`` images of its training data, with its
    teacher's result, the teacher run with the fused mode ``fused`` (``fastflow eval``)."""
    record.oftsr_scale()
    data = build_dataset(record.data_config)
    b = data.get(torch.arange(min(n, len(data))))
    teacher = load_model(record.teacher, device=device)
    apply_fused(teacher, fused, device)
    return tau_sweep(model, b.x.to(device), b.image.to(device), record.sigma_p, taus, teacher=teacher)


def super_resolve(record: CheckpointRecord, model: nn.Module, y: torch.Tensor, tau: float,
                  noise_seed: int) -> torch.Tensor:
    """Upscale low-resolution images ``y`` [N, C, h, w] in one step at knob ``tau`` (``fastflow sr``)."""
    scale, c, res = record.oftsr_scale(), model.config.in_channels, model.config.resolution
    if y.dim() != 4 or y.shape[1] != c or y.shape[-1] * scale != res or y.shape[-2] * scale != res:
        raise ConfigError(f"input must be low-resolution [N, {c}, {res // scale}, {res // scale}] for this model "
                          f"(×{scale} to {res}×{res}), got {list(y.shape)}")
    device = next(model.parameters()).device
    lq = F.interpolate(y, scale_factor=scale, mode="bicubic", align_corners=False).to(device)
    noise = torch.randn(lq.shape, generator=torch.Generator().manual_seed(noise_seed)).to(device)
    with torch.no_grad():
        return sr_one_step(model, lq, tau, record.sigma_p, noise)
