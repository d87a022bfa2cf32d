"""``fastflow checkpoint consolidate RUN [--out DIR]``: a sharded FSDP2 checkpoint → safetensors."""

from __future__ import annotations

import argparse

from fastflow.cli.common import add_threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoint", help="checkpoint tools: consolidate a sharded (FSDP2) checkpoint; show and "
                                          "check what a student came from")
    verbs = p.add_subparsers(dest="action", required=True)
    i = verbs.add_parser("info", help="a checkpoint's lineage: the pairs, teacher and init_from it was trained "
                                      "with, and theirs, each with its SHA-256")
    i.add_argument("path", help="checkpoint directory, or a run directory (its latest checkpoint)")
    i.add_argument("--verify", action="store_true",
                   help="check every link still on disk (ok / missing / changed); exit 1 when one changed")
    i.set_defaults(fn=run_info)
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


def run_info(args: argparse.Namespace) -> int:
    from fastflow.models.checkpoint import resolve_checkpoint, weights_source
    from fastflow.train.lineage import chain, lineage_of, verify

    d = resolve_checkpoint(args.path)
    name, sha = weights_source(d, "ema")
    print(f"{d} ({name} {sha[:12]})")
    lineage = lineage_of(d)
    if not lineage:
        print("  no recorded inputs" + (" (built-in data, no teacher, no init_from)" if lineage == {} else
                                        " (saved outside training, or before fastflow recorded them)"))
        return 0
    changed = False
    for link in chain(d):
        line = "  " * (link.depth + 1) + link.describe()
        if args.verify:
            status, detail = verify(link)
            changed |= status == "changed"
            line += f": {status} ({detail})"
        print(line)
    return 1 if changed else 0
