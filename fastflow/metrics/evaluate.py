"""Evaluate a velocity checkpoint as a generator: quality, straightness, cost and latency.

Quality features: the built-in digits classifier for ``1×16×16`` models, Inception (via
``pytorch-fid``, local weights) for RGB models given reference statistics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastflow.errors import ConfigError, DataError
from fastflow.flow import generate, straightness
from fastflow.flow.guidance import cfg_velocity
from fastflow.metrics.cost import count_flops, count_params
from fastflow.metrics.digits import digits_scores
from fastflow.metrics.frechet import frechet_distance, gaussian_stats
from fastflow.metrics.inception import inception_features
from fastflow.models.presets import sample_shape
from fastflow.utils.timing import measure_latency


def _reference_stats(ref: str, feats: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    p = Path(ref)
    if not p.is_file():
        raise DataError(f"reference {ref!r} not found")
    with np.load(p, allow_pickle=False) as z:
        if "mu" in z.files and "sigma" in z.files:
            return torch.from_numpy(z["mu"]).double(), torch.from_numpy(z["sigma"]).double()
        x = torch.from_numpy(z["x"]).float()
    x = x / 127.5 - 1 if x.max() > 1.5 else x
    with torch.no_grad():
        return gaussian_stats(torch.cat([feats(b) for b in x.split(100)]))


def evaluate(model: nn.Module, solver: str = "euler", steps: int | None = 1, n: int = 1000,
             seed: int = 0, batch_size: int = 500, features: str = "auto", ref: str | None = None,
             device: torch.device | str = "cpu", latency_iters: int = 20) -> dict[str, Any]:
    """Sample ``n`` from fixed noise with ``solver``/``steps`` and report every metric."""
    dev = torch.device(device)
    shape = sample_shape(model)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *shape, generator=g)
    xs, nfes = [], []
    t0 = time.perf_counter()
    for zb in z.split(batch_size):
        res = generate(model, zb.to(dev), solver, steps)
        xs.append(res.x.float().cpu())
        nfes.append(res.per_sample_nfe().cpu())
    sample_s = time.perf_counter() - t0
    x = torch.cat(xs)
    out: dict[str, Any] = {"solver": solver, "steps": steps, "n": n, "nfe": float(torch.cat(nfes).mean())}

    if features == "auto":
        features = "digits" if shape == (1, 16, 16) else ("inception" if ref else "none")
    if features == "digits":
        out.update({f"digits_{k}": v for k, v in digits_scores(x).items()})
    elif features == "inception":
        if not ref:
            raise ConfigError("Inception FD needs --ref (an .npz with mu/sigma or images x)")
        feats = inception_features().to(dev)
        with torch.no_grad():
            f = torch.cat([feats(b.to(dev)).cpu() for b in x.split(100)])
        out["fid"] = frechet_distance(f, _reference_stats(ref, lambda b: feats(b.to(dev)).cpu()))
    elif features != "none":
        raise ConfigError(f"features must be auto, digits, inception or none, got {features!r}")

    out["straightness"] = straightness(cfg_velocity(model, None), z[:256].to(dev), steps=32)
    out["params"] = count_params(model)
    out["gflops_per_call"] = count_flops(model, z[:1].to(dev)) / 1e9
    out["gflops_per_sample"] = out["gflops_per_call"] * out["nfe"]
    z1 = z[:1].to(dev)
    lat = measure_latency(lambda: generate(model, z1, solver, steps), dev, warmup=2,
                          iters=latency_iters)
    out["latency_ms_b1"] = lat.p50_ms
    out["latency"] = lat.to_dict()
    out["throughput_img_s"] = n / sample_s
    return out


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``) of per-seed results; equal values (one
    seed, or a seed-independent row) give that value and exactly 0, not rounding noise."""
    v = np.asarray(values, dtype=np.float64)
    return (float(v[0]), 0.0) if np.all(v == v[0]) else (float(v.mean()), float(v.std(ddof=1)))


def aggregate_rows(per_seed: Sequence[Sequence[dict[str, Any]]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Result tables of runs that differ only in their seed, row ``i`` of every run → one row: the
    ``keys`` columns (which name the row and must agree across runs) as they are, every other
    numeric column as its mean with ``KEY_sd`` (:func:`mean_sd`). ``ConfigError`` if the runs'
    tables do not line up."""
    if len({len(rows) for rows in per_seed}) != 1:
        raise ConfigError(f"runs have different numbers of rows: {[len(rows) for rows in per_seed]}")
    out = []
    for same in zip(*per_seed, strict=True):
        row = {k: same[0].get(k) for k in keys}
        if any({k: r.get(k) for k in keys} != row for r in same):
            raise ConfigError(f"runs disagree on a row's {list(keys)}: {[{k: r.get(k) for k in keys} for r in same]}")
        for k, v in same[0].items():
            if k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                row[k], row[f"{k}_sd"] = mean_sd([float(r[k]) for r in same])
        out.append(row)
    return out


#: Metrics that depend on the sampled noise (what ``evaluate_seeds`` averages).
SEED_METRICS = ("nfe", "digits_fd", "digits_coverage", "fid", "straightness")


def evaluate_seeds(model: nn.Module, seeds: Sequence[int], **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate` once per noise seed: the noise-dependent metrics become their mean over
    the seeds, with ``KEY_sd`` (sample standard deviation) and ``KEY_per_seed``; the rest
    (parameters, FLOPs, latency) come from the first seed's run."""
    runs = [evaluate(model, seed=s, **kwargs) for s in seeds]
    out = {**runs[0], "seeds": list(seeds)}
    for key in SEED_METRICS:
        if key in out:
            v = [float(r[key]) for r in runs]
            out[key], out[f"{key}_sd"] = mean_sd(v)
            out[f"{key}_per_seed"] = v
    return out
