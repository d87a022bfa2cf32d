"""One writer per output directory (advisory locks), and a resume that would not continue the same run."""

import json
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, TINY_DIGITS, cli_env, tiny_config
from safetensors.torch import load_file

from fastflow.cli.main import main
from fastflow.errors import ConfigError, LockedError
from fastflow.models import build_model
from fastflow.models.checkpoint import save_model
from fastflow.pairs import FlowTeacher, generate_pairs
from fastflow.train import train
from fastflow.train.state import latest_checkpoint
from fastflow.utils.lock import LOCK_NAME, directory_lock


def _weights(run) -> dict[str, torch.Tensor]:
    ck = latest_checkpoint(run)
    return {
        **load_file(ck / "model.safetensors"),
        **{f"ema.{k}": v for k, v in load_file(ck / "ema.safetensors").items()},
    }


@pytest.mark.slow  # ~27 s: two CLI trainings racing; the lock unit tests stay in make test
def test_two_trainings_on_one_out_dir(tmp_path, capsys) -> None:
    """The second training is refused in one line while the first runs; the first ends bit-identical
    to a lone run."""
    run, steps = tmp_path / "shared", 120
    extra = [f"train.steps={steps}", f"train.ckpt_every={steps}", "train.log_every=20"]
    threads = ["--threads", str(torch.get_num_threads())]  # every run computes with the same thread count
    first = subprocess.Popen([sys.executable, "-m", "fastflow", "train", "configs/digits.yaml", *TINY_DIGITS,
                              f"out_dir={run}", *extra, *threads],
                             cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((run / LOCK_NAME).is_file() and (run / LOCK_NAME).read_text()):  # the first holds the lock
        assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "timeout"
        time.sleep(0.02)
    holder = json.loads((run / LOCK_NAME).read_text())
    assert holder["pid"] == first.pid and holder["command"] == "training"

    code = main(["train", "configs/digits.yaml", *TINY_DIGITS, f"out_dir={run}", "seed=1", *extra, *threads])
    err = capsys.readouterr().err.strip().splitlines()
    assert first.poll() is None, "the first run ended before the second was tried: make it longer"
    assert code == 2 and len(err) == 1 and f"is in use: training by pid {first.pid}" in err[0], err

    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert not (run / LOCK_NAME).exists()  # released
    lone = train(tiny_config(tmp_path / "lone", *extra))
    a, b = _weights(run), _weights(lone)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "seed: 0" in (run / "config.yaml").read_text()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": 0, "command": "training"}))
    train(tiny_config(run, "train.steps=2"))
    err = capsys.readouterr().err
    assert "taking over the lock of an earlier run" in err and "pid 999999 on elsewhere" in err


def test_pairs_and_training_refuse_a_locked_directory(tmp_path) -> None:
    torch.manual_seed(0)
    teacher = FlowTeacher(build_model({"preset": "toy2d", "hidden": 32}).eval(), solver="euler", steps=2)
    with directory_lock(tmp_path / "pairs", "pair generation"):
        with pytest.raises(LockedError, match=r"in use: pair generation by pid \d+"):
            generate_pairs(teacher, tmp_path / "pairs", n=4, sample_shape=(2,), progress=False)
    assert not list((tmp_path / "pairs").iterdir())  # nothing written
    generate_pairs(teacher, tmp_path / "pairs", n=4, sample_shape=(2,), progress=False)  # released

    with directory_lock(tmp_path / "run", "training"):
        with pytest.raises(LockedError, match="in use: training"):
            train(tiny_config(tmp_path / "run", "train.steps=1"))
    assert not list((tmp_path / "run").iterdir())


def test_resume_with_another_batch_size_or_seed_is_refused(tmp_path) -> None:
    run = train(tiny_config(tmp_path / "r", "train.steps=2"))
    for change, words in (("train.batch_size=8", "train.batch_size=16; resuming with 8"),
                          ("seed=3", "seed=0; resuming with 3")):
        with pytest.raises(ConfigError, match=words):
            train(tiny_config(run, "train.steps=4", change), resume=True)
    assert latest_checkpoint(run).name == "step-00000002"


def test_a_teacher_of_another_shape_or_conditioning_is_refused(tmp_path) -> None:
    small = build_model({"preset": "tiny", "in_channels": 1, "resolution": 8})
    save_model(tmp_path / "t8", small)
    pairs = ["data.name=digits", "data.size=16"]
    with pytest.raises(ConfigError, match=r"teacher generates samples of shape \(1, 8, 8\), the student \(1, 16, 16\)"):
        train(tiny_config(tmp_path / "run", *pairs, f"objective={{name: fgd, teacher: {tmp_path / 't8'}}}"))
    save_model(tmp_path / "t16", build_model({"preset": "tiny", "in_channels": 1, "resolution": 16}))
    with pytest.raises(ConfigError, match="teacher is unconditional, the student class-conditional"):
        train(tiny_config(tmp_path / "run", "model.num_classes=10",
                          f"objective={{name: fgd, teacher: {tmp_path / 't16'}}}"))
