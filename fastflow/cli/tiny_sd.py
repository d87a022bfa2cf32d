"""``fastflow tiny-sd DIR``: a random tiny Stable-Diffusion-1.x-style diffusers folder (UNet with
cross-attention, VAE, CLIP text encoder, a stand-in tokenizer over lowercase letters, DDIM
scheduler; 8×8 latents), so that the whole SD path — prompts, pairs, 2-RF, distillation,
``--pipeline`` export, ``fastflow-run DIR``, ``export-diffusers`` — runs in minutes on a CPU without
SD's weights. Its images are noise: it shows the path works, not what SD makes."""

from __future__ import annotations

import argparse

from fastflow.cli.argtypes import nonneg_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tiny-sd",
                       help="write a random tiny SD-style diffusers folder (try the SD path without weights)")
    p.add_argument("out", help="a new directory")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the random weights")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from fastflow.models.diffusers_dir import TINY_CONFIGS, random_sd_folder
    from fastflow.utils.io import staged_dir

    with staged_dir(args.out) as stage:
        random_sd_folder(stage, TINY_CONFIGS, seed=args.seed)
    print(f"wrote {args.out}: a random tiny SD folder (8×8 latents); next, e.g.\n"
          f"  fastflow prompts {args.out} prompts.txt --out prompts.safetensors\n"
          f"  fastflow train instaflow-2rf model.path={args.out} model.prompts=prompts.safetensors ...")
    return 0
