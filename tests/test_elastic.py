"""Faults at scale without a human: ``torchrun --max-restarts 1 … fastflow train … --resume auto`` on two
CPU ranks (DDP and FSDP2) survives ``kill -9`` of one worker after the first checkpoint — the agent
restarts the group, the run resumes by itself, and its final weights equal an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastflow.models.checkpoint import load_model
from fastflow.train.state import latest_checkpoint
from tests.helpers import FSDP, ROOT, TINY_DIGITS, cli_env

STEPS = 40


def _torchrun(run: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "--monitor-interval=0.2", "-m", "fastflow", "train", "configs/digits.yaml", *TINY_DIGITS, f"out_dir={run}",
           f"train.steps={STEPS}", "train.log_every=5", *extra, "--resume", "auto", "--threads", "1"]
    return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _worker(agent: int, rank: int) -> int | None:
    """The pid of the agent's worker of ``rank`` (its child with ``RANK=rank`` in its environment)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == agent and f"RANK={rank}".encode() in env:
            return int(entry)
    return None


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {f"{w}.{k}": v for w in ("model", "ema") for k, v in load_model(run, weights=w).state_dict().items()}


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_torchrun_restarts_a_killed_rank_and_ends_as_an_uninterrupted_run(tmp_path, parallel) -> None:
    extra = ["train.ckpt_every=4", "train.sample_every=0"] + (FSDP[:1] if parallel == "fsdp2" else [])
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    job = _torchrun(killed, extra)
    deadline = time.time() + 240
    while latest_checkpoint(killed) is None if (killed / "checkpoints").is_dir() else True:
        assert job.poll() is None and time.time() < deadline, job.communicate()[0][-3000:]
        time.sleep(0.01)
    victim = _worker(job.pid, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0, out[-3000:]
    assert "resuming" in out and f"step-{STEPS:08d}" == latest_checkpoint(killed).name, out[-3000:]
    first = int(out.split("resuming", 1)[1].split("from step", 1)[1].split()[0])
    assert 0 < first < STEPS, "the kill came after the run had finished"

    ref = _torchrun(straight, extra)
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0 and "resuming" not in out, out[-3000:]
    a, b = _weights(killed), _weights(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
