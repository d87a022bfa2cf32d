"""``fastflow export-diffusers CKPT OUT``: a diffusers-backed student (``model.arch: sd``) as a
diffusers folder (denoiser, a one-step-exact scheduler, the source's VAE / text encoder /
tokenizer, ``model_index.json``) that ``DiffusionPipeline.from_pretrained(OUT)`` runs.
``--validate`` runs stock diffusers on it against fastflow's sampler on the same noise."""

from __future__ import annotations

import argparse

from fastflow.cli.argtypes import finite_float, nonneg_float, nonneg_int, positive_int
from fastflow.cli.common import add_threads
from fastflow.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-diffusers", help="save a diffusers-backed student as a diffusers pipeline folder")
    p.add_argument("ckpt", help="checkpoint directory, or run directory (latest checkpoint)")
    p.add_argument("out", help="new (or empty) output folder")
    p.add_argument("--weights", default="ema", choices=["ema", "model"],
                   help="the checkpoint's EMA weights (falls back to model when it has none) or its raw weights")
    p.add_argument("--validate", action="store_true",
                   help="run diffusers' pipeline on the folder and compare with fastflow's Euler sampler")
    p.add_argument("--steps", type=positive_int, default=1,
                   help="with --validate: sampling steps (one step is exact; for k > 1 diffusers truncates the "
                        "timesteps given to the denoiser to integers, e.g. 499 for fastflow's 499.5)")
    p.add_argument("--cfg", type=finite_float, default=1.0, help="with --validate: CFG scale (text models)")
    p.add_argument("--n", type=positive_int, default=2, help="with --validate: samples compared")
    p.add_argument("--seed", type=nonneg_int, default=0, help="with --validate: noise seed")
    p.add_argument("--atol", type=nonneg_float, default=1e-4, help="with --validate: largest |Δ| that passes")
    add_threads(p)
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from fastflow.export.diffusers_folder import round_trip, write_diffusers_folder
    from fastflow.models.checkpoint import load_model, read_record

    record = read_record(args.ckpt)
    if record.arch != "sd":
        raise ConfigError(f"{record.path}: export-diffusers takes diffusers-backed students (model.arch: sd), "
                          f"not {record.arch!r}; use fastflow-export for fastflow's own models")
    model = load_model(record.path, weights=args.weights, device="cpu").eval()
    out = write_diffusers_folder(model, args.out)
    print(f"wrote {out} ({model.backbone.pipeline}; load with DiffusionPipeline.from_pretrained)")
    if not args.validate:
        return 0
    r = round_trip(out, model, n=args.n, seed=args.seed, steps=args.steps, cfg_scale=args.cfg)
    ok = r["max_abs_err"] <= args.atol
    print(f"round trip {'passed' if ok else 'FAILED'}: diffusers {r['pipeline']} vs fastflow Euler {r['steps']} "
          f"on {r['samples']} samples ({r['compared']}): max |Δ| {r['max_abs_err']:.3g}, mean {r['mean_abs_err']:.3g} "
          f"(atol {args.atol})")
    return 0 if ok else 1
