"""Checkpoints and pair shards carry a SHA-256 of their payload, written inside the atomic rename;
every load verifies it, so a flipped byte anywhere in a payload is a typed error (one line, exit 2
in the CLI) naming the file — never silently different weights or pairs."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from fastflow.errors import CheckpointError, DataError
from fastflow.models import build_model, load_model, save_model
from fastflow.pairs import CallableTeacher, PairDataset, generate_pairs
from fastflow.train.state import TrainState, load_checkpoint, save_checkpoint


def _flip(path, where: float) -> None:
    """XOR one byte at a fraction of the file (0 = first byte, 1 = last)."""
    data = bytearray(path.read_bytes())
    i = min(len(data) - 1, int(where * len(data)))
    data[i] ^= 0x40
    path.write_bytes(bytes(data))


def _tiny():
    torch.manual_seed(0)
    return build_model({"preset": "tiny"})


@pytest.mark.parametrize("name", ["ema.safetensors", "model.safetensors"])
@pytest.mark.parametrize("where", [0.0, 0.01, 0.5, 1.0])  # header length, header JSON, data, last byte
def test_a_flipped_byte_in_a_model_payload_is_a_checkpoint_error(tmp_path, name, where) -> None:
    m = _tiny()
    save_model(tmp_path, m, m)
    assert set(json.loads((tmp_path / "config.json").read_text())["sha256"]) == {"model.safetensors", "ema.safetensors"}
    load_model(tmp_path, weights=name.split(".")[0])  # intact: loads
    _flip(tmp_path / name, where)
    with pytest.raises(CheckpointError, match=f"{name}: SHA-256 mismatch"):
        load_model(tmp_path, weights=name.split(".")[0])


def test_training_state_is_verified_too(tmp_path) -> None:
    m = _tiny()
    opt = torch.optim.Adam(m.parameters())
    state = TrainState(3, opt.state_dict())
    ckpt = save_checkpoint(tmp_path, m, m, state, keep=2)
    assert "state.pt" in json.loads((ckpt / "config.json").read_text())["sha256"]
    assert load_checkpoint(ckpt, _tiny(), _tiny()).step == 3
    _flip(ckpt / "state.pt", 0.5)
    with pytest.raises(CheckpointError, match="state.pt: SHA-256 mismatch"):
        load_checkpoint(ckpt, _tiny(), _tiny())


def test_checkpoints_without_digests_load_with_one_warning(tmp_path, caplog) -> None:
    m = _tiny()
    save_model(tmp_path, m, m)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["sha256"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING, logger="fastflow.checkpoint"):
        load_model(tmp_path)
        load_model(tmp_path, weights="model")
    assert sum("before SHA-256 digests" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("where", [0.01, 0.5, 1.0])
def test_a_flipped_byte_in_a_pair_shard_is_a_data_error(tmp_path, where) -> None:
    teacher = CallableTeacher(lambda z, c: 2 * z, name="double")
    generate_pairs(teacher, tmp_path, n=6, sample_shape=(3,), shard_size=4, progress=False)
    assert len(PairDataset(str(tmp_path))) == 6
    _flip(tmp_path / "shard-00001.safetensors", where)
    with pytest.raises(DataError, match="shard-00001"):
        PairDataset(str(tmp_path))
