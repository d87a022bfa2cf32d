"""``fastflow prompts SD PROMPTS --out TABLE``: encode prompts (one per line) into a prompt table
for Stable-Diffusion-style teachers; ``--ids IDS.npy``: their token ids ``[P, L]`` (int64), the
input of an exported pipeline's text encoder (``fastflow-run DIR --tokens IDS.npy``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastflow.cli.argtypes import device_arg
from fastflow.cli.common import add_threads, default_device
from fastflow.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prompts", help="encode a prompt file (one per line) into a prompt table for SD teachers")
    p.add_argument("sd", help="local Stable-Diffusion-style diffusers directory (tokenizer/, text_encoder/), or "
                              "with --ids only: an exported pipeline directory (tokenizer/)")
    p.add_argument("prompts", help="text file, one prompt per line")
    p.add_argument("--out", default=None, help="output prompt table (.safetensors)")
    p.add_argument("--ids", default=None, help="output token ids (.npy, int64 [P, L]) for fastflow-run --tokens")
    p.add_argument("--device", type=device_arg, default=default_device(), help="cpu, cuda or cuda:N")
    add_threads(p)
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from fastflow.models.prompts import tokenize_prompts, write_prompt_table
    from fastflow.utils.io import atomic_write, check_distinct, check_writable

    if not args.out and not args.ids:
        raise ConfigError("give --out TABLE.safetensors and/or --ids IDS.npy")
    check_distinct({"--out": args.out, "--ids": args.ids}, {"PROMPTS": args.prompts, "SD": args.sd})
    for path in (args.out, args.ids):
        if path:
            check_writable(path)
    try:
        prompts = [p.strip() for p in Path(args.prompts).read_bytes().decode("utf-8").splitlines() if p.strip()]
    except OSError as e:
        raise ConfigError(f"cannot read {args.prompts}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{args.prompts}: not UTF-8 text (byte {e.start}); save the prompts as UTF-8") from None
    if args.out:
        out = write_prompt_table(args.sd, prompts, args.out, device=args.device)
        print(f"wrote {out}: {len(prompts)} prompts + the null prompt")
    if args.ids:
        import numpy as np

        if not prompts:
            raise ConfigError("no prompts given (one per line)")
        ids = tokenize_prompts(args.sd, prompts).numpy()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a bare name
                np.save(f, ids)
        atomic_write(args.ids, write)
        print(f"wrote {args.ids}: token ids {list(ids.shape)} (int64)")
    return 0
