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


def explicit_resume(argv: list[str]) -> list[str]:
    """``--resume auto`` → ``--resume=auto`` and a bare ``--resume`` → ``--resume=yes``: the flag's
    optional value is never taken from the next word (``fastflow train --resume CONFIG`` keeps CONFIG)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--resume":
            auto = argv[i + 1:i + 2] == ["auto"]
            out.append("--resume=auto" if auto else "--resume=yes")
            i += 2 if auto else 1
        else:
            out.append(argv[i])
            i += 1
    return out


def run(args: argparse.Namespace) -> int:
    from fastflow.train import load_config, train

    cfg = load_config(args.config, args.overrides)
    out = train(cfg, resume={"no": False, "yes": True, "auto": "auto"}[args.resume])
    print(f"run directory: {out}")
    return 0
