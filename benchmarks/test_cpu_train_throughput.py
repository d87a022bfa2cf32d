"""A rehearsal of ``cpu_train_throughput.py`` at a toy size: every thread count's rows and pair rates
land in one JSON with the CPU named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from fastflow.models.checkpoint import save_model
from fastflow.models.presets import build_model
from fastflow.utils.io import read_json

SCRIPT = Path(__file__).with_name("cpu_train_throughput.py")


def test_rehearsal(tmp_path) -> None:
    torch.manual_seed(0)
    save_model(tmp_path / "teacher", build_model({"preset": "tiny"}))
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, str(SCRIPT), "--threads", "1,2", "--presets", "tiny", "--batch", "2",
                    "--steps", "1", "--pairs", "2", "--paths", "eager", "--pair-paths", "eager,fused",
                    "--teacher", str(tmp_path / "teacher"),
                    "--out", str(out)], check=True, capture_output=True)
    doc = read_json(out)
    assert [(r["threads"], r["path"]) for r in doc["rows"]] == [(1, "eager"), (2, "eager")]
    assert {p["threads"] for p in doc["pairs"]} == {1, 2} and doc["cpu"]
