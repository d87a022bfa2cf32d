"""Validation of an exported artefact against the PyTorch generator on fixed-seed inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


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
