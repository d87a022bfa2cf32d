"""``fastflow train CONFIG [key=value …] [--resume]``: the one training loop from a YAML config."""

from __future__ import annotations

import argparse

from fastflow.cli.common import add_threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config file (e.g. configs/digits.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100")
    p.add_argument("--resume", nargs="?", const="yes", default="no", choices=["yes", "auto"], metavar="auto",
                   help="continue from the run's latest checkpoint (an error when there is none); --resume auto: "
                        "continue when there is one, else start (for torchrun --max-restarts N)")
    add_threads(p)
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from fastflow.train import load_config, train

    cfg = load_config(args.config, args.overrides)
    out = train(cfg, resume={"no": False, "yes": True, "auto": "auto"}[args.resume])
    print(f"run directory: {out}")
    return 0
