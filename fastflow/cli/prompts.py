"""``fastflow prompts SD PROMPTS --out TABLE``: encode prompts (one per line) into a prompt table
for Stable-Diffusion-style teachers."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastflow.cli.common import add_threads, default_device, device_arg
from fastflow.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prompts", help="encode a prompt file (one per line) into a prompt table for SD teachers")
    p.add_argument("sd", help="local Stable-Diffusion-style diffusers directory (tokenizer/, text_encoder/)")
    p.add_argument("prompts", help="text file, one prompt per line")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--device", type=device_arg, default=default_device(), help="cpu, cuda or cuda:N")
    add_threads(p)
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from fastflow.models.prompts import write_prompt_table
    from fastflow.utils.io import check_writable

    check_writable(args.out)
    try:
        prompts = Path(args.prompts).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read {args.prompts}: {e.strerror}") from None
    out = write_prompt_table(args.sd, prompts, args.out, device=args.device)
    print(f"wrote {out}: {len([p for p in prompts if p.strip()])} prompts + the null prompt")
    return 0
