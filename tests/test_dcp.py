"""Sharded (DCP) checkpoints on one process: they load, sample, export and consolidate; damage,
pickled values and a save killed midway are refused or leave the last good checkpoint; bad options
are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fastflow.cli.main import main
from fastflow.errors import CheckpointError, ConfigError
from fastflow.models.checkpoint import load_model
from fastflow.models.presets import build_model
from fastflow.train import train
from fastflow.train.state import latest_checkpoint, list_checkpoints
from tests.helpers import FSDP, tiny_config


def _fsdp_run(tmp_path: Path, name: str = "run", steps: int = 2) -> Path:
    return train(tiny_config(tmp_path / name, *FSDP, f"train.steps={steps}"))


def test_sharded_checkpoint_loads_consolidates_and_refuses_damage(tmp_path, capsys) -> None:
    run = _fsdp_run(tmp_path, steps=4)
    ck = latest_checkpoint(run)
    assert ck.name == "step-00000004" and (ck / "dcp" / "metadata.json").is_file()
    assert not (ck / "dcp" / ".metadata").exists()  # nothing to unpickle
    assert not (ck / "model.safetensors").exists()
    direct = load_model(run)  # sharded, read in this process
    assert main(["sample", str(run), "--n", "2", "--steps", "1", "--out", str(tmp_path / "s.png")]) == 0
    from fastflow.cli.export import main as export_main

    assert export_main([str(run), "--format", "onnx", "-o", str(tmp_path / "g.onnx"), "--validate"]) == 0
    assert main(["checkpoint", "consolidate", str(run)]) == 0
    ema = load_file(ck / "ema.safetensors")
    assert all(torch.equal(ema[k], v) for k, v in direct.state_dict().items())
    assert main(["checkpoint", "consolidate", str(run), "--out", str(tmp_path / "plain")]) == 0
    plain = load_model(tmp_path / "plain")
    assert all(
        torch.equal(a, b) for a, b in zip(plain.state_dict().values(), direct.state_dict().values(), strict=True)
    )
    assert main(["checkpoint", "consolidate", str(tmp_path / "plain")]) == 2
    assert "not a sharded checkpoint" in capsys.readouterr().err

    older = list_checkpoints(run)[-2]
    shard = sorted((older / "dcp").glob("*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_model(older)
    assert main(["sample", str(older), "--n", "1", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SHA-256 mismatch" in err[0]
    (older / "dcp" / "metadata.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_model(older)


def test_a_save_killed_midway_leaves_latest_on_a_complete_checkpoint(tmp_path, monkeypatch) -> None:
    run = _fsdp_run(tmp_path)
    import torch.distributed.checkpoint as dcp

    real = dcp.save

    def dies(state, **kw):
        real(state, **kw)
        raise KeyboardInterrupt  # after the shards, before the digests and the rename

    monkeypatch.setattr(dcp, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(run, *FSDP, "train.steps=4"), resume=True)
    assert latest_checkpoint(run).name == "step-00000002"
    assert not list((run / "checkpoints").glob(".*.tmp"))
    monkeypatch.setattr(dcp, "save", real)
    train(tiny_config(run, *FSDP, "train.steps=4"), resume=True)
    assert latest_checkpoint(run).name == "step-00000004"


def test_pickled_values_in_a_sharded_checkpoint_are_refused(tmp_path) -> None:
    import torch.distributed.checkpoint as dcp

    from fastflow.models.checkpoint import write_config
    from fastflow.models.sharded import shard_files
    from fastflow.utils.io import file_digest

    model = build_model({"preset": "tiny"})
    ck = tmp_path / "ck"
    dcp.save({"model": model.state_dict(), "ema": model.state_dict(), "extra": {"x": [1, 2]}},
             checkpoint_id=ck / "dcp", no_dist=True)
    write_config(ck, model, {"step": 1}, {f: file_digest(ck / f) for f in shard_files(ck)})
    with pytest.raises(CheckpointError, match="pickled values"):
        load_model(ck)


def test_single_file_checkpoint_under_fsdp2_and_bad_options_are_one_line(tmp_path) -> None:
    run = train(tiny_config(tmp_path / "ddp", "train.steps=1"))
    with pytest.raises(ConfigError, match="single-file"):
        train(tiny_config(run, *FSDP, "train.steps=2"), resume=True)
    for bad, msg in (("train.parallel=zero3", "train.parallel"), ("train.precision=bf16", "FSDP2"),
                     ("train.activation_checkpointing=all", "activation_checkpointing"),
                     ("train.grad_accum=0", "grad_accum")):
        with pytest.raises(ConfigError, match=msg):
            tiny_config(tmp_path / "x", bad)
    with pytest.raises(ConfigError, match="cpu_offload"):
        train(tiny_config(tmp_path / "off", *FSDP, "train.cpu_offload=true", "train.steps=1"))
