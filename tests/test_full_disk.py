"""A full disk while training checkpoints or pair shards are written: one line, exit 2, nothing partial
left, the earlier checkpoint / shards intact and the work resumable once space is back (a small
tmpfs; root only, skipped otherwise). The export case is in test_export.py, the runner's in ctest."""

import pytest
import torch
from helpers import FSDP, TINY_DIGITS, fill_disk, small_tmpfs

import fastflow.pairs.writer as writer
import fastflow.train.loop as loop
from fastflow.cli.main import main
from fastflow.models import load_model
from fastflow.models.checkpoint import save_model
from fastflow.models.presets import build_model
from fastflow.pairs import PairDataset
from fastflow.train.state import latest_checkpoint, list_checkpoints


def _one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("fused kernels")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("saver", ["save_checkpoint", "save_sharded"], ids=["single-file", "fsdp2-dcp"])
def test_checkpoint_save_on_a_full_disk(tmp_path, monkeypatch, capsys, saver) -> None:
    threads = ["--threads", str(torch.get_num_threads())]
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        run = disk / "run"
        args = ["train", "configs/digits.yaml", *TINY_DIGITS, f"out_dir={run}", "train.ckpt_every=2",
                *(FSDP[:1] if saver == "save_sharded" else [])]
        assert main([*args, "train.steps=2", *threads]) == 0
        capsys.readouterr()
        real = getattr(loop, saver)

        def fill_then_save(*a, **k):  # noqa: ANN002, ANN003
            fill_disk(disk)
            return real(*a, **k)

        monkeypatch.setattr(loop, saver, fill_then_save)
        assert main([*args, "train.steps=4", "--resume", *threads]) == 2
        line = _one_line(capsys)
        assert line.startswith("fastflow: error: ") and line.endswith("No space left on device"), line
        assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]
        assert latest_checkpoint(run).name == "step-00000002"
        assert not list((run / "checkpoints").glob(".*"))  # nothing partial
        load_model(latest_checkpoint(run))
        monkeypatch.setattr(loop, saver, real)
        (disk / "filler").unlink()
        assert main([*args, "train.steps=4", "--resume", *threads]) == 0  # space back: the run goes on
        assert latest_checkpoint(run).name == "step-00000004"


def test_pair_shards_on_a_full_disk(tmp_path, monkeypatch, capsys) -> None:
    torch.manual_seed(0)
    save_model(tmp_path / "teacher", build_model({"preset": "toy2d", "hidden": 32}))
    args = ["pairs", str(tmp_path / "teacher"), "--count", "64", "--shard-size", "16", "--solver", "euler",
            "--steps", "2", "--quiet"]
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / "pairs"
        real, written = writer.atomic_save_tensors, []

        def fill_after_two(path, *a, **k):  # noqa: ANN001, ANN002, ANN003
            if len(written) == 2:
                fill_disk(disk)
            written.append(path)
            return real(path, *a, **k)

        monkeypatch.setattr(writer, "atomic_save_tensors", fill_after_two)
        assert main([*args, "--out", str(out)]) == 2
        line = _one_line(capsys)
        assert line.startswith("fastflow: error: ") and line.endswith("No space left on device"), line
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.safetensors",
                                                         "shard-00001.safetensors"]  # nothing partial
        monkeypatch.setattr(writer, "atomic_save_tensors", real)
        (disk / "filler").unlink()
        assert main([*args, "--out", str(out)]) == 0  # space back: the two shards are kept, two more made
        assert len(PairDataset(str(out))) == 64


def test_consolidate_in_place_on_a_full_disk(tmp_path, capsys) -> None:
    """Consolidating a sharded checkpoint where the disk fills: one line, and the checkpoint is left as it
    was (no model.safetensors beside the shards that config.json does not list), still loading."""
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        run = disk / "run"
        assert main(["train", "configs/digits.yaml", *TINY_DIGITS, f"out_dir={run}", *FSDP, "train.steps=2"]) == 0
        ck = latest_checkpoint(run)
        before = sorted(p.name for p in ck.iterdir())
        capsys.readouterr()
        fill_disk(disk)
        assert main(["checkpoint", "consolidate", str(run)]) == 2
        assert _one_line(capsys).endswith("No space left on device")
        assert sorted(p.name for p in ck.iterdir()) == before
        load_model(run)
        (disk / "filler").unlink()
        assert main(["checkpoint", "consolidate", str(run)]) == 0
        assert (ck / "model.safetensors").is_file() and load_model(run) is not None
