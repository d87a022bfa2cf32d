"""What a newcomer sees: labelled sample strips, grids enlarged the same way everywhere, and a CLI
whose output holds fastflow's lines only (upstream noise a user can do nothing about is silenced)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from PIL import Image

from fastflow.errors import ShapeError
from fastflow.utils.images import display_upscale, save_grid


def test_row_labels_widen_the_grid_and_must_match_its_rows(tmp_path) -> None:
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    plain = Image.open(save_grid(x, tmp_path / "a.png", nrow=3, upscale=2))
    labelled = Image.open(save_grid(x, tmp_path / "b.png", nrow=3, upscale=2, row_labels=["lq", "tau=0.5"]))
    assert labelled.size[1] == plain.size[1] and labelled.size[0] > plain.size[0]
    right = labelled.crop((labelled.size[0] - plain.size[0], 0, *labelled.size))
    assert list(right.getdata()) == list(plain.getdata())  # the grid itself is untouched
    with pytest.raises(ShapeError, match="3 row labels for a grid of 2 rows"):
        save_grid(x, tmp_path / "c.png", nrow=3, row_labels=["a", "b", "c"])


def test_display_upscale_reaches_about_64_pixels() -> None:
    assert [display_upscale(w) for w in (8, 16, 28, 32, 64, 256)] == [8, 4, 2, 2, 1, 1]


def test_quiet_upstream_keeps_the_users_choice(monkeypatch) -> None:
    from fastflow.cli.common import QUIET_ENV, QUIET_LOGGERS, quiet_upstream

    for name, _ in QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DIFFUSERS_VERBOSITY", "info")  # the user's setting wins
    for name, _ in QUIET_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    quiet_upstream()
    import os

    assert os.environ["DIFFUSERS_VERBOSITY"] == "info" and os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    assert all(logging.getLogger(name).level == level for name, level in QUIET_LOGGERS)


def test_sd_commands_print_only_fastflow_lines(tmp_path) -> None:
    """``tiny-sd`` and ``prompts`` load diffusers/transformers (and, where installed, torchao): their stderr
    holds no upstream warning, deprecation or weight-loading bar."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    env = {k: v for k, v in __import__("os").environ.items() if not k.endswith("_VERBOSITY")}
    (tmp_path / "p.txt").write_text("a cat\n")
    for args in (["tiny-sd", "sd"], ["prompts", "sd", "p.txt", "--out", "p.safetensors"]):
        res = subprocess.run([sys.executable, "-m", "fastflow", *args], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert res.stderr.strip() == "", res.stderr
