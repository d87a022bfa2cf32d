"""``fastflow sample CKPT``: noise → model → solver, to a PNG grid or an ``.npz`` of samples."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fastflow.cli.argtypes import finite_float, nonneg_int, positive_float, positive_int
from fastflow.cli.common import add_model_args, add_sampling_args, add_threads, load_checkpoint, rk45_bar
from fastflow.errors import ConfigError
from fastflow.models.presets import sample_shape, viewable

#: A PNG grid of more samples is unreadable (and huge): ask for .npz instead.
MAX_GRID = 4096


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw samples from a checkpoint")
    add_sampling_args(p, "euler", 16)
    p.add_argument("--r", type=positive_float, default=0.5, help="rk2 intermediate point in (0, 1]")
    p.add_argument("--rtol", type=positive_float, default=1e-5, help="rk45 relative tolerance")
    p.add_argument("--atol", type=positive_float, default=1e-5, help="rk45 absolute tolerance")
    p.add_argument("--n", type=positive_int, default=64, help="number of samples")
    p.add_argument("--batch-size", type=positive_int, default=256, help="samples per model call")
    p.add_argument("--seed", type=nonneg_int, default=0, help="noise seed (the same noise for any --batch-size)")
    p.add_argument("--label", type=int, default=None, help="class label (class-conditional models)")
    p.add_argument("--cfg", type=finite_float, default=1.0, help="classifier-free guidance scale α")
    p.add_argument("--prompt-emb", default=None,
                   help="text embedding (.safetensors, [L, D]) for token-conditioned models")
    add_model_args(p)
    p.add_argument("--out", default="samples.png", help="grid.png or samples.npz")
    add_threads(p)
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from fastflow.flow.sample import generate
    from fastflow.flow.solvers import options_for
    from fastflow.utils.images import save_samples
    from fastflow.utils.io import atomic_savez, check_fits_in_memory, check_writable

    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):
        raise ConfigError(f"--out must end in .png or .npz, got {args.out!r}")
    if out.suffix == ".png" and args.n > MAX_GRID:
        raise ConfigError(f"--n {args.n}: a PNG grid holds at most {MAX_GRID} samples; write .npz for more")
    if args.prompt_emb is not None and args.label is not None:
        raise ConfigError("give --label or --prompt-emb, not both")
    check_writable(out)
    _, model = load_checkpoint(args)
    device = args.device
    cfg, shape = model.config, sample_shape(model)
    check_fits_in_memory(args.n * math.prod(shape) * 4, f"--n {args.n} samples of shape {list(shape)}")
    cond = None
    if args.prompt_emb is not None:
        cond = {"tokens": _prompt_embedding(args.prompt_emb).to(device)}
    elif args.label is not None:
        if not cfg.num_classes:
            raise ConfigError("--label given but the model is not class-conditional")
        if not 0 <= args.label < cfg.num_classes:
            raise ConfigError(f"--label must be in [0, {cfg.num_classes})")
        cond = torch.full((args.n,), args.label, dtype=torch.long)
    elif cfg.num_classes:
        cond = torch.arange(args.n) % cfg.num_classes
    if args.cfg != 1.0 and cond is None:
        raise ConfigError(f"--cfg {args.cfg}: guidance needs a conditional model (this one is unconditional)")
    kwargs = options_for(args.solver, rtol=args.rtol, atol=args.atol, r=args.r,  # rk45 says how far it got
                         progress=rk45_bar() if args.solver == "rk45" else None)
    g = torch.Generator().manual_seed(args.seed)
    z = torch.randn(args.n, *shape, generator=g)  # the same noise for any --batch-size
    xs, nfe = [], 0
    t0 = time.perf_counter()
    for i in tqdm(range(0, args.n, args.batch_size), desc="sample", disable=args.n <= args.batch_size,
                  unit="batch"):
        zi = z[i:i + args.batch_size].to(device)
        if isinstance(cond, dict):
            ci = {"tokens": cond["tokens"].expand(len(zi), -1, -1)}
        else:
            ci = None if cond is None else cond[i:i + args.batch_size].to(device)
        res = generate(model, zi, args.solver, args.steps, cond=ci, cfg_scale=args.cfg, **kwargs)
        xs.append(res.x.float().cpu())
        nfe = max(nfe, res.nfe)
    wall = time.perf_counter() - t0
    x = torch.cat(xs)
    if out.suffix == ".npz":  # raw samples (latents for latent models)
        atomic_savez(out, x=x.numpy(), nfe=np.asarray(nfe),
                     **({"label": cond.numpy()} if isinstance(cond, torch.Tensor) else {}))
    else:
        save_samples(viewable(model, x.to(device)), out, title=f"{args.solver} NFE {nfe}")
    print(f"wrote {out}: {args.n} samples, solver={args.solver}, NFE={nfe}, "
          f"wall={wall:.3f}s ({wall / args.n * 1e3:.2f} ms/sample)")
    return 0


def _prompt_embedding(path: str) -> torch.Tensor:
    """One text embedding ``[1, L, D]`` from a safetensors file (its only tensor, or ``embedding``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"--prompt-emb {path}: not a readable safetensors file ({e})") from None
    emb = tensors.get("embedding", next(iter(tensors.values())) if len(tensors) == 1 else None)
    if emb is None or emb.dim() not in (2, 3) or (emb.dim() == 3 and len(emb) != 1):
        raise ConfigError(f"--prompt-emb {path}: want one tensor [L, D] or [1, L, D] (or key 'embedding')")
    return emb.float().reshape(1, *emb.shape[-2:])
