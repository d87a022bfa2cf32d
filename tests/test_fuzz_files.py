"""Property-based tests of the files fastflow parses: pairs manifests and shard headers, checkpoint
``config.json``, ``pipeline.json``, ``.pt2`` metadata, ``.npz`` datasets and prompt files. A hostile
edit of a valid file ends in success or one line with exit 2 (the CLI boundary), and changes no file.
DCP metadata has its own in test_hostile_sharded.py; the runner's ``.npy`` headers are ctest cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastflow.cli.main import main
from fastflow.data.npz import NpzDataset
from fastflow.export.pipeline import read_pipeline
from fastflow.export.spec import BatchRange, GeneratorSpec
from fastflow.models import build_model, save_model
from fastflow.models.checkpoint import load_model, read_record
from fastflow.pairs import FlowTeacher, PairDataset, generate_pairs
from tests.fuzz import cli_outcome, examples, values

FUZZ = examples(80)
paths = st.lists(st.one_of(st.text(max_size=12), st.integers(0, 3)), min_size=1, max_size=4)


def mutate(obj: Any, path: list[Any], value: Any) -> Any:
    """``obj`` (parsed JSON) with the node ``path`` leads to (keys where they exist, else the first
    entry) replaced by ``value``; the whole document when the path ends at the top."""
    if not isinstance(obj, (dict, list)) or not obj:
        return value
    node = obj
    for step in path[:-1]:
        if isinstance(node, dict) and node:
            node = node.get(step) if step in node else next(iter(node.values()))
        elif isinstance(node, list) and node:
            node = node[step % len(node)] if isinstance(step, int) else node[0]
        if not isinstance(node, (dict, list)) or not node:
            return value if step == path[0] else obj
    last = path[-1]
    if isinstance(node, dict):
        node[last if isinstance(last, str) else next(iter(node))] = value
    else:
        node[last % len(node) if isinstance(last, int) else 0] = value
    return obj


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    teacher = build_model({"preset": "toy2d", "hidden": 8, "depth": 1})
    root = tmp_path_factory.mktemp("pairs") / "p"
    generate_pairs(FlowTeacher(teacher, "euler", steps=1), root, n=12, sample_shape=(2,), shard_size=6,
                   progress=False)
    return root


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model({"preset": "toy2d", "hidden": 8, "depth": 1})
    return save_model(tmp_path_factory.mktemp("ck") / "c", model, model, meta={"objective_config": {"name": "rf"}})


def _edited_copy(src: Path, dest: Path, name: str, path: list[Any], value: Any) -> Path:
    """A copy of the folder ``src`` whose JSON file ``name`` has ``value`` at ``path`` (:func:`mutate`)."""
    shutil.copytree(src, dest)
    (dest / name).write_text(json.dumps(mutate(json.loads((dest / name).read_text()), path, value)))
    return dest


@FUZZ
@given(path=paths, value=values)
def test_hostile_pairs_manifest(pairs_dir, tmp_path_factory, path, value, capsys) -> None:
    root = _edited_copy(pairs_dir, tmp_path_factory.mktemp("m") / "p", "manifest.json", path, value)
    before = _snapshot(root)
    cli_outcome(lambda: PairDataset(str(root)).get(torch.arange(2)), capsys)
    assert _snapshot(root) == before


@FUZZ
@given(path=paths, value=values, cut=st.integers(0, 400))
def test_hostile_pair_shard_header(pairs_dir, tmp_path_factory, path, value, cut, capsys) -> None:
    root = tmp_path_factory.mktemp("s") / "p"
    shutil.copytree(pairs_dir, root)
    shard = root / "shard-00000.safetensors"
    data = shard.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(mutate(json.loads(data[8:8 + n]), path, value)).encode()
    body = data[8 + n:]
    shard.write_bytes((len(header).to_bytes(8, "little") + header + body)[: None if cut == 0 else -cut])
    cli_outcome(lambda: PairDataset(str(root)).get(torch.arange(6)), capsys)


@FUZZ
@given(path=paths, value=values)
def test_hostile_checkpoint_config(ckpt_dir, tmp_path_factory, path, value, capsys) -> None:
    d = _edited_copy(ckpt_dir, tmp_path_factory.mktemp("c") / "c", "config.json", path, value)

    def load() -> None:
        read_record(d)
        load_model(d)

    cli_outcome(load, capsys)


@FUZZ
@given(path=paths, value=values)
def test_hostile_pipeline_manifest(tmp_path_factory, path, value, capsys) -> None:
    d = tmp_path_factory.mktemp("pipe")
    good = {"format": "fastflow-pipeline", "version": 1, "artefact_format": "onnx", "chain": ["generator"],
            "components": {"generator": {"file": "generator.onnx", "kind": "text_generator"}}}
    (d / "pipeline.json").write_text(json.dumps(mutate(good, path, value)))
    cli_outcome(lambda: read_pipeline(d), capsys)


@FUZZ
@given(key=st.sampled_from(["version", "kind", "sample_shape", "batch_min", "batch_opt", "batch_max", "dtype",
                            "steps", "num_classes", "device", "cond_shape", "checkpoint_sha256"]),
       value=st.one_of(st.text(max_size=12), st.sampled_from(["-1", "0", "1,-2", "9" * 30, "", ",", "1e3", "nan"])))
def test_hostile_pt2_metadata(key, value, capsys) -> None:
    meta = GeneratorSpec("conditional", (1, 8, 8), BatchRange(1, 2, 4), num_classes=3).to_metadata()
    meta[f"fastflow.{key}"] = value
    cli_outcome(lambda: GeneratorSpec.from_metadata(meta, "package.pt2"), capsys)


@FUZZ
@given(arrays=st.dictionaries(st.sampled_from(["x", "images", "y", "labels", "other"]),
                              st.sampled_from(["f32", "nan", "int", "1d", "5d", "empty", "bool", "str"]), max_size=3))
def test_hostile_npz_dataset(tmp_path_factory, arrays, capsys) -> None:
    make = {"f32": np.zeros((4, 1, 4, 4), np.float32), "nan": np.full((4, 1, 4, 4), np.nan, np.float32),
            "int": np.zeros((4,), np.int64), "1d": np.zeros(4, np.float32), "5d": np.zeros((1, 1, 1, 1, 1)),
            "empty": np.zeros((0, 1, 4, 4), np.float32), "bool": np.zeros((4, 1, 4, 4), bool),
            "str": np.array(["a", "b"])}
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    np.savez(path, **{k: make[v] for k, v in arrays.items()})
    cli_outcome(lambda: NpzDataset(str(path)).get(torch.arange(1)), capsys)


@examples(40)
@given(data=st.binary(max_size=64))
def test_hostile_prompt_files(tmp_path_factory, data, capsys) -> None:
    d = tmp_path_factory.mktemp("prompts")
    (d / "p.txt").write_bytes(data)
    capsys.readouterr()
    assert main(["prompts", str(d / "no-sd"), str(d / "p.txt"), "--out", str(d / "t.safetensors")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert (d / "p.txt").read_bytes() == data and not (d / "t.safetensors").exists()
