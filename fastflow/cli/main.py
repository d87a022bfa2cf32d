"""``fastflow VERB …``: one module per verb under :mod:`fastflow.cli`, each with ``add_parser(sub)``
and ``run(args)``. Bad input → one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fastflow.cli import (
    bench,
    checkpoint,
    config,
    demo,
    export,
    export_diffusers,
    pairs,
    prompts,
    sample,
    sr,
    tiny_sd,
    train,
)
from fastflow.cli import eval as eval_
from fastflow.cli.common import Parser, add_version, run_cli

VERBS = (train, config, sample, pairs, prompts, eval_, sr, bench, export, export_diffusers, checkpoint, tiny_sd, demo)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fastflow", description="One-step generators from rectified flows.")
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(train.explicit_resume(argv) if argv[:1] == ["train"] else argv)
    return run_cli("fastflow", args.fn, args)
