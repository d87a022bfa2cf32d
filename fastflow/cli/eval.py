"""``fastflow eval CKPT``: quality, straightness, parameters, FLOPs, NFE and latency of a checkpoint
(an OFTSR student: its τ sweep)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from fastflow.cli.argtypes import nonneg_int, positive_int
from fastflow.cli.common import add_model_args, add_sampling_args, add_threads, load_checkpoint


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="quality, straightness, params, FLOPs, NFE and latency of a checkpoint")
    add_sampling_args(p, "one_step", 1)
    p.add_argument("--n", type=positive_int, default=1000, help="samples for the quality metrics")
    p.add_argument("--seed", type=nonneg_int, default=0, help="noise seed")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="repeat with noise seeds SEED … SEED+N−1: metrics as mean with their sd (KEY_sd)")
    p.add_argument("--features", default="auto", choices=["auto", "digits", "inception", "none"],
                   help="features of the Fréchet distance (auto: digits for 16×16 grey images, else Inception)")
    p.add_argument("--ref", default=None, help="reference .npz (mu/sigma or images x) for Inception FD")
    add_model_args(p)
    p.add_argument("--json", default=None, help="output JSON (default: CKPT/eval-SOLVER.json)")
    p.add_argument("--taus", default="0.01,0.25,0.5,0.75,0.99", help="OFTSR students: knob values to sweep")
    add_threads(p)
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from fastflow.metrics.evaluate import SEED_METRICS, evaluate_seeds
    from fastflow.utils.io import atomic_write_json, check_writable
    from fastflow.utils.table import format_table

    steps = None if args.solver in ("rk45", "one_step") else args.steps
    out = check_writable(args.json) if args.json else None  # before loading anything
    record, model = load_checkpoint(args)
    if record.kind == "image":
        return _eval_sr(args, record, model, out)
    out = out or check_writable(record.path / f"eval-{args.solver}{steps or ''}.json")
    res: dict[str, Any] = evaluate_seeds(model, range(args.seed, args.seed + args.seeds), solver=args.solver,
                                         steps=steps, n=args.n, features=args.features, ref=args.ref,
                                         device=args.device)
    res["checkpoint"] = str(record.path)
    cols = [c for c in ("solver", "steps", *SEED_METRICS, "params", "gflops_per_sample", "latency_ms_b1") if c in res]
    print(format_table([res], cols))
    atomic_write_json(out, res)
    print(f"wrote {out}")
    return 0


def _eval_sr(args: argparse.Namespace, record: Any, model: torch.nn.Module, out: Path | None) -> int:
    """τ sweep of an OFTSR student (PSNR, SSIM, HF-energy ratio), with the teacher's result."""
    from fastflow.errors import ConfigError
    from fastflow.metrics.sr_eval import save_sweep_plot, sweep_checkpoint
    from fastflow.utils.images import save_grid
    from fastflow.utils.io import atomic_write_json, check_writable
    from fastflow.utils.table import format_table

    out = out or check_writable(record.path / "eval-sr.json")
    try:
        taus = [float(t) for t in args.taus.split(",")]
    except ValueError:
        raise ConfigError(f"--taus takes a comma list of numbers, got {args.taus!r}") from None
    rows, samples = sweep_checkpoint(record, model, args.n, taus, args.device, args.fused)
    print(format_table(rows, ["method", "tau", "NFE", "psnr", "ssim", "hf_ratio"]))
    atomic_write_json(out, {"checkpoint": str(record.path), "rows": rows})
    save_sweep_plot(rows, str(out.with_suffix(".png")))
    k = min(8, args.n)  # one row per method, at most 8 images each
    strip = torch.cat([x[:k].cpu() for x in samples.values()])
    save_grid(strip, out.with_name(out.stem + "-samples.png"), nrow=k, upscale=4, row_labels=list(samples))
    print(f"wrote {out}, {out.with_suffix('.png')}, {out.with_name(out.stem + '-samples.png')} "
          f"(rows: {', '.join(samples)})")
    return 0
