"""``fastflow demo``: the embedded recipes on the CPU (SlimFlow on digits; ``--conditional``
InstaFlow, ``--sr`` OFTSR), once or over ``--seeds``."""

from __future__ import annotations

import argparse
from typing import Any

from fastflow.cli.argtypes import choice_list, positive_float, positive_int
from fastflow.cli.common import add_fused_arg, add_threads, compile_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the embedded SlimFlow pipeline on digits (CPU, 20 to 50 minutes on 2 cores)")
    p.add_argument("--out", default="demo_out", help="output directory (every stage resumes from it)")
    p.add_argument("--scale", type=positive_float, default=1.0,
                   help="multiply every training budget and the pair count (e.g. 4 for a longer run)")
    p.add_argument("--conditional", action="store_true",
                   help="also run InstaFlow on class-conditioned digits with CFG (~25 more minutes on one CPU thread)")
    p.add_argument("--sr", action="store_true",
                   help="also run OFTSR ×4 on photographs (scikit-image's; τ sweep on held-out ones; ~7 more minutes "
                        "on one CPU thread)")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="run each pipeline (SlimFlow, --conditional, --sr) with seeds 0 … N−1 (each in "
                        "its OUT/…/seed-S) and report mean ± sd")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="with --seeds: run that many seeds at once, each in its own process with --threads threads, "
                        "for machines with cores to spare (on 2 cores it gained nothing and slowed every step ~2x). "
                        "MeanFlow's budget is CPU seconds measured in its seed's process; latencies are measured "
                        "under the other jobs' load: rerun without --jobs to re-score (finished stages are skipped)")
    p.add_argument("--methods", type=choice_list("slimflow", "meanflow"), default=["slimflow"],
                   help="one-step routes on digits: slimflow (teacher, pairs, reflow, FGD) and/or meanflow "
                        "(teacher-free, trained for the SlimFlow route's measured time; needs that run in --out)")
    p.add_argument("--skip-main", action="store_true", help="skip the SlimFlow run (with --conditional / --sr)")
    p.add_argument("--compile", type=compile_arg, default="model", metavar="{off,model,step}",
                   help="train.compile of every training stage (MeanFlow's runs eager: it cannot compile; off: "
                        "the eager route)")
    p.add_argument("--amp", choices=("bf16", "none"), default=None,
                   help="train.amp of those stages (default: bf16 where this CPU executes it natively, AVX512-BF16 "
                        "or AMX, else none)")
    add_fused_arg(p, " (the trained networks, their frozen teachers and the pair teacher)")
    add_threads(p)
    p.set_defaults(fn=run)


def execution(args: argparse.Namespace) -> Any:
    """The :class:`~fastflow.recipes.stages.Execution` of ``--compile``, ``--amp`` and ``--fused``."""
    from fastflow.recipes.stages import Execution

    return Execution(compile=args.compile, amp=args.amp or Execution.fastest().amp, fused=args.fused)


def run(args: argparse.Namespace) -> int:
    from fastflow import demo
    from fastflow.utils.io import writable_dir

    demo.run(writable_dir(args.out), list(range(args.seeds)), args.scale,
             slimflow_run="slimflow" in args.methods and not args.skip_main, instaflow_run=args.conditional,
             oftsr_run=args.sr, meanflow_run="meanflow" in args.methods, jobs=args.jobs, ex=execution(args))
    return 0
