"""``fastflow pairs TEACHER --out DIR --count N``: teacher pairs ``(z, T(z))`` as resumable shards
(any number of ranks under torchrun; the noise of shard k depends on the seed and k only)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fastflow.cli.argtypes import device_arg, finite_float, nonneg_int, positive_float, positive_int
from fastflow.cli.common import add_fused_arg, add_threads, rk45_bar
from fastflow.errors import ConfigError
from fastflow.flow.solvers import SOLVERS
from fastflow.fused.frozen import apply_frozen
from fastflow.models.checkpoint import resolve_checkpoint
from fastflow.models.presets import sample_shape


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pairs", help="generate teacher pairs (z, T(z)) as resumable shards")
    p.add_argument("ckpt", nargs="?", default=None, help="teacher checkpoint directory (or run directory)")
    p.add_argument("--diffusers", "--sd", dest="sd", default=None,
                   help="instead: a local diffusers directory (Stable-Diffusion-style UNet, DDPM/DDIM UNet2DModel "
                        "or flow-matching transformer; models.sd)")
    p.add_argument("--prompts", default=None, help="with --diffusers: prompt table from `fastflow prompts` "
                   "(text-conditioned models)")
    p.add_argument("--prediction", default=None, choices=["epsilon", "v_prediction", "sample", "flow"],
                   help="with --diffusers: override the scheduler's prediction type")
    p.add_argument("--out", required=True, help="output directory for shards + manifest.json")
    p.add_argument("--count", type=positive_int, required=True, help="number of pairs")
    p.add_argument("--shard-size", type=positive_int, default=1000, help="pairs per shard file")
    p.add_argument("--batch-size", type=positive_int, default=256, help="teacher batch size")
    p.add_argument("--solver", default="rk45", choices=[s for s in SOLVERS if s != "one_step"],
                   help="the teacher's ODE solver")
    p.add_argument("--steps", type=positive_int, default=100, help="steps for euler/heun/rk2")
    p.add_argument("--rtol", type=positive_float, default=1e-5, help="rk45 relative tolerance")
    p.add_argument("--atol", type=positive_float, default=1e-5, help="rk45 absolute tolerance")
    p.add_argument("--cfg", type=finite_float, default=1.0, help="CFG scale of a conditional teacher")
    p.add_argument("--seed", type=nonneg_int, default=0, help="noise seed (shard k's noise depends on it and k)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="dtype of the stored pairs")
    p.add_argument("--weights", default="ema", choices=["ema", "model"],
                   help="the teacher's EMA weights (falls back to model when it has none) or its raw weights")
    p.add_argument("--device", type=device_arg, default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    add_fused_arg(p, " (applied to the teacher)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads(p)
    p.set_defaults(fn=run)


def _sd_teacher(args: argparse.Namespace, device: torch.device):  # noqa: ANN202
    from fastflow.models.diffusers_dir import backbone_of, locate
    from fastflow.models.sd import SDConfig, SDVelocity
    from fastflow.pairs import FlowTeacher
    from fastflow.utils.io import file_digest

    _, name, _ = locate(args.sd)  # before the weights load
    if backbone_of(name).conditioning == "text" and not args.prompts:
        raise ConfigError(f"--diffusers: a text-conditioned {name} needs --prompts TABLE (made by `fastflow prompts`)")
    if backbone_of(name).conditioning == "class" and args.cfg != 1.0:
        raise ConfigError(f"--cfg {args.cfg}: a {name}'s classes have no null class to guide against")
    model = SDVelocity(SDConfig(path=args.sd, prompts=args.prompts, prediction=args.prediction)).to(device).eval()
    source = {"sd": str(Path(args.sd).expanduser().resolve()), "denoiser": name, "prediction": model.config.prediction,
              "prompts_sha256": file_digest(args.prompts) if args.prompts else None}
    return FlowTeacher(model=model, source=source, solver=args.solver,
                       steps=args.steps if args.solver != "rk45" else None, rtol=args.rtol, atol=args.atol,
                       cfg_scale=args.cfg)


def run(args: argparse.Namespace) -> int:
    from fastflow.pairs import FlowTeacher, generate_pairs
    from fastflow.utils.distributed import init_distributed
    from fastflow.utils.io import writable_dir

    info = init_distributed()
    device = args.device or info.device
    if (args.ckpt is None) == (args.sd is None):
        raise ConfigError("give a teacher checkpoint or --diffusers DIR (exactly one)")
    writable_dir(args.out)
    if args.sd is not None:
        teacher = _sd_teacher(args, device)
    else:
        teacher = FlowTeacher.from_checkpoint(resolve_checkpoint(args.ckpt), device=device,
                                              weights=args.weights, solver=args.solver,
                                              steps=args.steps if args.solver != "rk45" else None,
                                              rtol=args.rtol, atol=args.atol, cfg_scale=args.cfg)
    if args.cfg != 1.0 and not teacher.num_classes:
        raise ConfigError(f"--cfg {args.cfg}: guidance needs a conditional teacher (this one is unconditional)")
    decision, err = apply_frozen(teacher.model, args.fused, device)
    if decision.active and info.main:
        print(f"teacher: {decision.path} inference kernels, max |Δ| against eager {err:.2g} on a random batch")
    if args.solver == "rk45" and not args.quiet and info.main:
        teacher.progress = rk45_bar()  # a batch of RK45 can take minutes: its calls are counted too
    t0 = time.perf_counter()
    manifest = generate_pairs(teacher, args.out, args.count, sample_shape(teacher.model),
                              shard_size=args.shard_size, seed=args.seed, batch_size=args.batch_size, device=device,
                              dtype=args.dtype, info=info, progress=not args.quiet)
    if info.main:
        wall = time.perf_counter() - t0
        print(f"wrote {manifest['count']} pairs in {len(manifest['shards'])} shards to {args.out}: "
              f"mean NFE {manifest['mean_nfe']:.1f}, {wall:.1f}s")
    return 0
