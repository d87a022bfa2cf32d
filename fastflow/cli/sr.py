"""``fastflow sr STUDENT --input LR --tau T``: one-step super-resolution with an OFTSR student
(:func:`fastflow.metrics.sr_eval.super_resolve`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fastflow.cli.argtypes import finite_float, nonneg_int
from fastflow.cli.common import add_model_args, add_threads, load_checkpoint
from fastflow.errors import ConfigError, SolverError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sr", help="one-step super-resolution with an OFTSR student")
    p.add_argument("ckpt", help="OFTSR student checkpoint (or run directory)")
    p.add_argument("--input", required=True, help="low-resolution image (png/jpg) or .npz with x [N, C, h, w]")
    p.add_argument("--tau", type=finite_float, default=0.5, help="fidelity (0) ↔ realism (1) knob")
    p.add_argument("--scale", type=int, default=None, help="the student's trained scale (checked when given)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the start state's noise")
    add_model_args(p)
    p.add_argument("--out", default="sr.png",
                   help="the images at the model's resolution: a .png (several inputs: OUT-000.png, OUT-001.png, …) "
                        "or an .npz with x [N, C, H, W] in [−1, 1]")
    p.add_argument("--grid", default=None, help="also a display grid (bordered, enlarged) as this PNG")
    add_threads(p)
    p.set_defaults(fn=run)


def _read_input(src: Path, channels: int) -> torch.Tensor:
    """Images in [−1, 1], [N, C, h, w], from an ``.npz`` (checked there: real, finite, non-empty, in
    [−1, 1] or uint8) or an image file taken as it is (never resized or turned grey)."""
    from fastflow.data.folder import decode_image
    from fastflow.data.npz import NpzDataset

    if src.suffix == ".npz":
        ds = NpzDataset(str(src))
        return ds.get(torch.arange(len(ds))).x
    rgb = torch.from_numpy(decode_image(src, 3).copy()).permute(2, 0, 1)
    if channels == 1 and not (rgb == rgb[:1]).all():
        raise ConfigError(f"{src} is a colour image; this student takes grey images (convert it first)")
    return rgb[:channels][None].float() / 127.5 - 1.0


def _outputs(out: Path, n: int) -> list[Path]:
    """Where the images go: ``out`` itself (one image, or an ``.npz``), else one numbered PNG each."""
    if out.suffix.lower() == ".npz" or n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i:03d}{out.suffix}") for i in range(n)]


def run(args: argparse.Namespace) -> int:
    from fastflow.metrics.sr_eval import super_resolve
    from fastflow.utils.images import display_upscale, save_grid, save_image
    from fastflow.utils.io import atomic_savez, check_distinct, check_writable

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npz") or (args.grid and Path(args.grid).suffix.lower() != ".png"):
        raise ConfigError(f"--out must be a .png or .npz file and --grid a .png, got {args.out!r}, {args.grid!r}")
    if not 0.0 <= args.tau <= 1.0:
        raise ConfigError("--tau must be in [0, 1]")
    check_distinct({"--out": args.out, "--grid": args.grid}, {"--input": args.input})
    check_writable(args.out)
    if args.grid:
        check_writable(args.grid)
    record, model = load_checkpoint(args)
    scale = record.oftsr_scale()
    if args.scale is not None and args.scale != scale:
        raise ConfigError(f"--scale {args.scale}: this student was trained for ×{scale}")
    x = super_resolve(record, model, _read_input(Path(args.input), model.config.in_channels), args.tau, args.seed)
    if not torch.isfinite(x).all():
        raise SolverError("the student produced NaN or Inf values; no image written")
    paths = _outputs(out, len(x))
    check_distinct({f"image {i}": p for i, p in enumerate(paths)}, {"--input": args.input, "--grid": args.grid})
    if out.suffix.lower() == ".npz":
        atomic_savez(out, x=x.float().cpu().numpy())
    else:
        for image, path in zip(x, paths, strict=True):
            save_image(image, path)
    if args.grid:
        save_grid(x, args.grid, upscale=display_upscale(model.config.resolution, target=128))
    shown = str(paths[0]) if len(paths) == 1 else f"{paths[0]} … {paths[-1].name}"
    print(f"wrote {shown}{' and ' + args.grid if args.grid else ''}: {len(x)} image(s) "
          f"{x.shape[-2]}×{x.shape[-1]} (×{scale}), tau={args.tau}, NFE=1")
    return 0
