"""Hostile sharded (DCP) checkpoints: a pickle naming ``os.system`` through a dotted name, metadata of
the wrong type, and fuzzed ``metadata.json`` — each ends in one line and exit 2 from every verb that
reads a checkpoint, with the digests in ``config.json`` updated as a sender would, and never runs code."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastflow.cli.export import main as export_main
from fastflow.cli.main import main
from fastflow.errors import CheckpointError
from fastflow.models.checkpoint import read_config
from fastflow.models.sharded import read_metadata, shard_files
from fastflow.train import train
from fastflow.train.state import latest_checkpoint
from fastflow.utils.io import atomic_write_json, file_digest
from tests.fuzz import examples
from tests.helpers import FSDP, ROOT, TINY_DIGITS, tiny_config


def _u(text: str) -> bytes:  # SHORT_BINUNICODE
    data = text.encode()
    return b"\x8c" + struct.pack("<B", len(data)) + data


def dotted_system_pickle(command: str) -> bytes:
    """Protocol 4: ``STACK_GLOBAL('torch.distributed.checkpoint.metadata', 'os.system')(command)`` —
    the module is DCP's own and imports ``os``, so a module-level allow-list let it through."""
    return (b"\x80\x04" + _u("torch.distributed.checkpoint.metadata") + _u("os.system") + b"\x93"
            + _u(command) + b"\x85R.")


def resign(ckpt: Path) -> None:
    """Update ``config.json``'s digests for ``dcp/`` as whoever hands over a checkpoint can."""
    cfg = read_config(ckpt)
    sha = {k: v for k, v in cfg["sha256"].items() if not k.startswith("dcp/")}
    sha.update({f: file_digest(ckpt / f) for f in shard_files(ckpt)})
    atomic_write_json(ckpt / "config.json", {**cfg, "sha256": sha})


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    return train(tiny_config(tmp_path_factory.mktemp("fsdp") / "run", *FSDP, "train.steps=2"))


def _copy(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest, symlinks=True)
    return dest


def _verbs(run: Path, tmp: Path) -> list[tuple[str, object]]:
    return [
        ("sample", lambda: main(["sample", str(run), "--n", "1", "--steps", "1", "--out", str(tmp / "s.png")])),
        ("consolidate", lambda: main(["checkpoint", "consolidate", str(run)])),
        (
            "resume",
            lambda: main(
                [
                    "train",
                    "--resume",
                    str(ROOT / "configs" / "digits.yaml"),
                    *TINY_DIGITS,
                    f"out_dir={run}",
                    *FSDP,
                    "train.steps=4",
                ]
            ),
        ),
        ("export", lambda: export_main([str(run), "--format", "ep", "-o", str(tmp / "g.pt2")])),
    ]


@pytest.mark.parametrize("payload", ["dotted-os-system", "list", "int"])
def test_hostile_pickled_metadata_never_runs_code(fsdp_run, tmp_path, capsys, payload) -> None:
    run = _copy(fsdp_run, tmp_path / "run")
    ck = latest_checkpoint(run)
    marker = tmp_path / "MARKER"
    body = {"dotted-os-system": dotted_system_pickle(f"touch {marker}"), "list": b"\x80\x04]\x94.",
            "int": b"\x80\x04K\x07."}[payload]
    (ck / "dcp" / "metadata.json").unlink()
    (ck / "dcp" / ".metadata").write_bytes(body)
    resign(ck)
    for verb, call in _verbs(run, tmp_path):
        capsys.readouterr()
        assert call() == 2, verb
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ".metadata" in err[0], (verb, err)
        assert not marker.exists(), verb
    assert "os.system" in (err[0] if payload == "dotted-os-system" else "os.system")


#: hand-made metadata.json damage: (name, edit of the record) → one CheckpointError
def _edits() -> list[tuple[str, object]]:
    def first(rec: dict) -> dict:
        return next(iter(rec["tensors"].values()))

    return [
        ("a list", lambda r: [r]),
        ("wrong format", lambda r: {**r, "format": "x"}),
        ("unknown dtype", lambda r: first(r).update(dtype="os.system")),
        ("negative size", lambda r: first(r).update(size=[-1])),
        ("huge size", lambda r: first(r).update(size=[1 << 70])),
        ("chunk outside", lambda r: first(r)["chunks"][0].update(sizes=[10 ** 6] * len(first(r)["size"]))),
        ("path escape", lambda r: r["storage"][0].update(file="../../../etc/passwd")),
        ("duplicate storage", lambda r: r["storage"].append(dict(r["storage"][0]))),
        ("missing storage", lambda r: r["storage"].pop()),
        ("extra key", lambda r: r["storage"][0].update(code="os.system")),
        ("bool as int", lambda r: r["storage"][0].update(start=True)),
        ("planner of unknown key", lambda r: r["planner_data"].update(x=["x"])),
        ("float length", lambda r: r["storage"][0].update(length=1.5)),
    ]


@pytest.mark.parametrize("name,edit", _edits(), ids=[n for n, _ in _edits()])
def test_malformed_metadata_json_is_one_checkpoint_error(fsdp_run, name, edit) -> None:
    meta = latest_checkpoint(fsdp_run) / "dcp" / "metadata.json"
    rec = json.loads(meta.read_text())
    out = edit(rec)
    rec = rec if out is None else out
    with pytest.raises(CheckpointError):
        _check(meta.parent, rec)


def _check(shards: Path, rec: object) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "metadata.json").write_text(json.dumps(rec))
        read_metadata(Path(d))


_json = st.recursive(st.none() | st.booleans() | st.integers(-2, 1 << 64) | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=20)


@examples(60)
@given(path=st.lists(st.sampled_from(["tensors", "planner_data", "storage", 0, "dtype", "size", "chunks", "offset",
                                      "file", "start", "length", "index", "key", "offsets", "sizes"]),
                     min_size=1, max_size=4),
       value=_json)
def test_fuzzed_metadata_json_loads_or_is_one_checkpoint_error(fsdp_run, path, value) -> None:
    """Replace what ``path`` reaches in a valid record by a hostile value: a valid record or a
    CheckpointError, never another exception."""
    rec = json.loads((latest_checkpoint(fsdp_run) / "dcp" / "metadata.json").read_text())
    node = rec
    for step in path[:-1]:
        if isinstance(node, dict) and node:
            node = node[step] if step in node else next(iter(node.values()))
        elif isinstance(node, list) and node:
            node = node[0]
    if isinstance(node, dict):
        node[path[-1] if isinstance(path[-1], str) else "x"] = value
    elif isinstance(node, list) and node:
        node[0] = value
    try:
        _check(Path("."), rec)
    except CheckpointError as e:
        assert "\n" not in str(e)


@pytest.fixture(scope="module")
def legacy_metadata(tmp_path_factory) -> bytes:
    """DCP's own pickled ``.metadata`` of a small state (what checkpoints before metadata.json hold)."""
    import pickle

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import StorageMeta

    d = tmp_path_factory.mktemp("legacy") / "dcp"
    dcp.save({"model": {"w": torch.zeros(2, 3), "b": torch.ones(3)}}, checkpoint_id=d, no_dist=True)
    meta = pickle.loads((d / ".metadata").read_bytes())  # our own file: the same bytes on every run
    meta.storage_meta = StorageMeta(checkpoint_id=None, save_id="fixed")
    return pickle.dumps(meta, protocol=4)


@examples(150)
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.integers(0, 64))
def test_fuzzed_legacy_pickle_loads_or_is_one_checkpoint_error(legacy_metadata, tmp_path_factory, edits, cut) -> None:
    """Flipped and cut bytes of a real pickled ``.metadata``: a valid Metadata or a CheckpointError."""
    from fastflow.models.dcp_metadata import read_legacy

    data = bytearray(legacy_metadata)
    for at, value in edits:
        data[at % len(data)] = value
    path = tmp_path_factory.mktemp("m") / ".metadata"
    path.write_bytes(bytes(data[: len(data) - cut]))
    try:
        read_legacy(path)
    except CheckpointError as e:
        assert "\n" not in str(e)
