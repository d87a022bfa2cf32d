"""Validation of an exported artefact against the PyTorch generator on fixed-seed inputs, and the
quality cost of an int8 artefact."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from fastflow.errors import ArtifactError
from fastflow.export.spec import GeneratorSpec
from fastflow.utils.images import psnr_db


def compare(reference: Callable[..., Tensor], candidate: Callable[..., Tensor],
            inputs: Sequence[Tensor | tuple[Tensor, ...]], atol: float, rtol: float) -> dict[str, Any]:
    """Max/mean absolute and relative error, NaN/Inf count, pass/fail under
    ``|a − b| ≤ atol + rtol·|a|`` for every element."""
    max_abs = mean_abs_sum = max_rel = 0.0
    n_el = bad = nonfinite = 0
    per_batch = []
    for item in inputs:
        args = item if isinstance(item, tuple) else (item,)
        with torch.no_grad():
            ref = reference(*args).float().cpu()
            got = candidate(*args).float().cpu()
        if got.shape != ref.shape:
            return {"passed": False, "error": f"shape {tuple(got.shape)} != reference {tuple(ref.shape)}"}
        finite = torch.isfinite(got)
        nonfinite += int((~finite).sum())
        diff = (got - ref).abs()
        diff = torch.where(finite, diff, torch.full_like(diff, float("inf")))
        rel = diff / ref.abs().clamp(min=1e-6)
        max_abs = max(max_abs, float(diff.max()))
        mean_abs_sum += float(diff[finite].sum())
        max_rel = max(max_rel, float(rel.max()))
        n_el += diff.numel()
        bad += int((diff > atol + rtol * ref.abs()).sum())
        per_batch.append({"batch": int(args[0].shape[0]), "max_abs_err": float(diff.max())})
    return {"passed": bad == 0 and nonfinite == 0, "atol": atol, "rtol": rtol,
            "max_abs_err": max_abs, "mean_abs_err": mean_abs_sum / max(1, n_el - nonfinite),
            "max_rel_err": max_rel, "nan_inf_count": nonfinite, "violations": bad,
            "per_batch": per_batch}


#: samples of the int8 quality report (the digits demo's scoring size)
QUALITY_SAMPLES = 1000


def int8_quality(reference: Callable[..., Tensor], candidate: Callable[..., Tensor], spec: GeneratorSpec,
                 inputs_for: Callable[[int], tuple[Tensor, ...]], samples: int = QUALITY_SAMPLES,
                 scores: Callable[[Tensor], dict[str, float] | None] | None = None) -> dict[str, Any]:
    """What quantization costs, on the same inputs: max/mean |Δ| and PSNR of the int8 output against
    fp32 (images in [−1, 1], peak-to-peak 2); with ``scores`` (the model's own metric, e.g.
    ``fastflow.metrics.digits_scores``; None from it: not for these images) also its ``fd`` and ``coverage`` for both
    (``fd_rel_change``: int8 over fp32, minus 1)."""
    ref, got = [], []
    for start in range(0, samples, spec.batch.max):
        args = inputs_for(min(spec.batch.max, samples - start))
        with torch.no_grad():
            ref.append(reference(*args).float().cpu())
            got.append(candidate(*args).float().cpu())
    a, b = torch.cat(ref), torch.cat(got)
    if not torch.isfinite(b).all():
        raise ArtifactError("the int8 artefact produced NaN/Inf")
    mse = float(((a.clamp(-1, 1) - b.clamp(-1, 1)) ** 2).mean())
    out: dict[str, Any] = {"samples": len(a), "max_abs_err": float((a - b).abs().max()),
                           "mean_abs_err": float((a - b).abs().mean()),
                           "psnr_db": psnr_db(mse)}
    fp32 = scores(a) if scores is not None else None
    if fp32 is not None:
        int8 = scores(b)
        out.update(fd_fp32=fp32["fd"], fd_int8=int8["fd"], fd_rel_change=int8["fd"] / fp32["fd"] - 1,
                   coverage_fp32=fp32["coverage"], coverage_int8=int8["coverage"])
    return out
