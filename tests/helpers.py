"""Shared test helpers: tiny configs and running the CLI in a subprocess."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fastflow.data import BatchStream
from fastflow.train.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
#: the user's cache as it was before the test session gave every test a private one (conftest);
#: read at collection, before any fixture runs. The code-generation rows are kept there across runs.
USER_CACHE = Path(os.environ.get("FASTFLOW_CACHE", Path.home() / ".cache" / "fastflow"))

# A very small digits UNet: a training step takes milliseconds on a CPU.
TINY_DIGITS = [
    "model.arch=unet", "model.in_channels=1", "model.resolution=16", "model.channels=8",
    "model.ch_mult=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[8]",
    "model.dropout=0.1",  # dropout on: a resumed run must draw the same masks
    "data.name=digits", "train.batch_size=16", "train.ema_rate=0.99", "optim.lr=1e-3",
    "optim.warmup=3", "train.progress=false", "train.tensorboard=false", "train.sample_n=4",
    "train.sample_steps=2", "train.log_every=1",
]


#: a sharded (FSDP2) run checkpointing every 2 steps
FSDP = ["train.parallel=fsdp2", "train.ckpt_every=2", "train.keep_ckpts=10", "train.sample_every=0"]


def tiny_config(out_dir: Path, *extra: str) -> TrainConfig:
    return load_config(None, [*TINY_DIGITS, f"out_dir={out_dir}", *extra])


def read_log(run: Path) -> list[dict]:
    """The records of a run's ``log.jsonl``."""
    import json

    return [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("FASTFLOW_THREADS", str(torch.get_num_threads()))  # the CLI computes as the tests do
    return env


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m fastflow ARGS`` (or ``python -m MODULE ARGS`` when ARGS start with ``-m``); ``env``
    overrides variables of the test environment."""
    cmd = [*args] if args and args[0] == "-m" else ["-m", "fastflow", *args]
    return subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env={**cli_env(), **(env or {})},
                          timeout=timeout, cwd=ROOT)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the ``with`` body (skips the test unless root)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def fill_disk(disk: Path) -> None:
    """Fill the file system of ``disk`` (a file ``filler`` takes every free block)."""
    subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=4k"], capture_output=True)


def fit(objective, model: torch.nn.Module, stream: BatchStream, steps: int, lr: float = 3e-3) -> list[float]:
    """Plain Adam on ``objective`` for ``steps`` batches; the per-step losses."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        loss, _ = objective(model, stream.batch(step), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def tiny_diffusers_unet(cross_dim: int = 24) -> torch.nn.Module:
    """A two-level diffusers ``UNet2DConditionModel`` with self and cross attention (seeded)."""
    import diffusers

    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim, attention_head_dim=8, norm_num_groups=8)


def seeded_run(out: Path, scale: float, seed: int = 0) -> dict:
    """A pipeline ``run`` for ``over_seeds`` tests: rows from its seed, the process that ran it."""
    out.mkdir(parents=True, exist_ok=True)
    x = torch.Generator().manual_seed(seed)
    return {"rows": [{"method": "m", "value": torch.rand((), generator=x).item() * scale}],
            "checks": {"positive": True}, "pid": os.getpid()}


def tiny_sd_folder(root: Path) -> Path:
    """A complete tiny SD-1.x-style diffusers folder (UNet, DDIM scheduler, VAE, CLIP tokenizer and
    text encoder): what ``fastflow tiny-sd`` writes (``fastflow/configs/sd-tiny``)."""
    from fastflow.models.diffusers_dir import TINY_CONFIGS, random_sd_folder

    return random_sd_folder(root, TINY_CONFIGS)


def tiny_sd_configs(configs: Path) -> Path:
    """A copy of the tiny stand-ins of ``fastflow/configs/sd15`` in ``configs`` (to edit)."""
    import shutil

    from fastflow.models.diffusers_dir import TINY_CONFIGS

    shutil.copytree(TINY_CONFIGS, configs, dirs_exist_ok=True)
    return configs


def tiny_sd_student(tmp: Path, prediction: str = "velocity") -> tuple[str, torch.nn.Module]:
    """A checkpoint directory of an SD-style student (tiny random folder, a 2-prompt table) and the model."""
    from fastflow.models.checkpoint import save_model
    from fastflow.models.prompts import write_prompt_table
    from fastflow.models.sd import SDConfig, SDVelocity

    root = tmp / "sd"
    if not root.is_dir():
        tiny_sd_folder(root)
        write_prompt_table(root, ["a cat", "a red dog"], tmp / "prompts.safetensors")
    model = SDVelocity(SDConfig(path=str(root), prediction=prediction, prompts=str(tmp / "prompts.safetensors")))
    ckpt = tmp / f"ckpt-{prediction}"
    ckpt.mkdir()
    return str(save_model(ckpt, model)), model
