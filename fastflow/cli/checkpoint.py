"""``fastflow checkpoint consolidate RUN [--out DIR]``: a sharded FSDP2 checkpoint → safetensors."""

from __future__ import annotations

import argparse

from fastflow.cli.common import add_threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoint", help="checkpoint tools: consolidate a sharded (FSDP2) checkpoint")
    verbs = p.add_subparsers(dest="action", required=True)
    c = verbs.add_parser("consolidate", help="write model/ema safetensors of a sharded checkpoint (any world "
                                             "size) beside its shards, or into a new directory")
    c.add_argument("path", help="checkpoint directory, or a run directory (its latest checkpoint)")
    c.add_argument("--out", default=None, help="new directory for a plain model checkpoint (default: in place)")
    add_threads(c)
    c.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from fastflow.models.consolidate import consolidate

    out = consolidate(args.path, args.out)
    print(f"consolidated: {out} (model.safetensors, ema.safetensors, config.json)")
    return 0
