"""Pair generation: determinism per (seed, shard), resumability after SIGKILL with 1 and 2 ranks,
the memory-mapped dataset, settings checks."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, cli_env
from safetensors.torch import load_file

from fastflow.data import build_dataset
from fastflow.errors import DataError
from fastflow.models import build_model, save_model
from fastflow.pairs import CallableTeacher, FlowTeacher, PairDataset, generate_pairs
from fastflow.pairs.writer import shard_inputs


def _toy_teacher(num_classes: int = 0) -> FlowTeacher:
    torch.manual_seed(0)
    m = build_model({"preset": "toy2d", "hidden": 32, "num_classes": num_classes}).eval()
    return FlowTeacher(m, solver="euler", steps=4)


def test_shard_noise_depends_only_on_seed_and_index() -> None:
    a, _ = shard_inputs(0, 3, 10, (2,), 0)
    b, _ = shard_inputs(0, 3, 10, (2,), 0)
    c, _ = shard_inputs(0, 4, 10, (2,), 0)
    d, _ = shard_inputs(1, 3, 10, (2,), 0)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


def test_unfinished_pairs_of_the_earlier_shard_seeding_are_not_continued(tmp_path) -> None:
    """Manifest version 1 seeded shards with SHA-256: continuing one would mix two noise streams."""
    teacher = _toy_teacher()
    args = dict(n=20, sample_shape=(2,), shard_size=10, batch_size=4, progress=False)
    man = generate_pairs(teacher, tmp_path / "a", **args)
    assert man["version"] == 2
    old = {**man, "version": 1, "complete": False}
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(DataError, match="earlier fastflow"):
        generate_pairs(teacher, tmp_path / "a", **args)
    (tmp_path / "a" / "manifest.json").write_text(json.dumps({**old, "complete": True}))
    assert generate_pairs(teacher, tmp_path / "a", **args)["complete"]  # a finished one is read as it is


def test_generate_and_read_pairs(tmp_path) -> None:
    teacher = _toy_teacher(num_classes=3)
    man = generate_pairs(teacher, tmp_path, n=25, sample_shape=(2,), shard_size=10, batch_size=4,
                         progress=False)
    assert man["complete"] and man["count"] == 25 and man["shard_counts"] == [10, 10, 5]
    assert man["mean_nfe"] == 4.0 and man["settings"]["teacher"]["solver"] == "euler"
    ds = build_dataset({"name": "pairs", "root": str(tmp_path)})
    assert isinstance(ds, PairDataset) and len(ds) == 25 and ds.num_classes == 3
    assert isinstance(ds.shards[0]["x"], np.memmap)
    idx = torch.tensor([24, 3, 11, 3, 0])
    b = ds.get(idx)
    raw = [load_file(tmp_path / f"shard-0000{k}.safetensors") for k in range(3)]
    for j, i in enumerate(idx.tolist()):
        s, r = divmod(i, 10)
        assert torch.equal(b.x[j], raw[s]["x"][r]) and torch.equal(b.z[j], raw[s]["z"][r])
        assert int(b.label[j]) == int(raw[s]["label"][r])
    # x really is the teacher's image of z (with its label)
    x, _ = teacher(b.z, b.label)
    assert torch.allclose(x, b.x, atol=1e-6)


def test_pair_settings_and_completeness_checks(tmp_path) -> None:
    generate_pairs(_toy_teacher(), tmp_path, n=8, sample_shape=(2,), shard_size=4, progress=False)
    with pytest.raises(DataError, match="other settings"):
        generate_pairs(_toy_teacher(), tmp_path, n=8, sample_shape=(2,), shard_size=4, seed=1,
                       progress=False)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["complete"] = False
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="not finished"):
        PairDataset(str(tmp_path))
    bad = CallableTeacher(lambda z, c: z * float("nan"), name="nan")
    with pytest.raises(DataError, match="non-finite"):
        generate_pairs(bad, tmp_path / "nan", n=4, sample_shape=(2,), progress=False)


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.glob("shard-*.safetensors")):
        for k, v in sorted(load_file(p).items()):
            h.update(k.encode())
            h.update(v.numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def slow_teacher(tmp_path_factory):
    """A digits-shaped UNet with non-zero output; Euler 40 makes a shard take a visible time."""
    d = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    m = build_model({"preset": "digits-small"})
    torch.nn.init.normal_(m.conv_out.weight, std=0.05)
    save_model(d, m, m)
    return d


def _pairs_cmd(ckpt, out, ranks: int) -> list[str]:
    args = ["pairs", str(ckpt), "--out", str(out), "--count", "192", "--shard-size", "8", "--batch-size", "8",
            "--solver", "euler", "--steps", "40", "--quiet"]
    if ranks == 1:
        return [sys.executable, "-m", "fastflow", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
            "-m", "fastflow", *args]


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (children first found through /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("ranks", [pytest.param(1, marks=pytest.mark.slow), 2])  # 2 ranks cover 1
def test_sigkill_restart_gives_identical_pairs(tmp_path, slow_teacher, ranks) -> None:
    env = {**cli_env(), "OMP_NUM_THREADS": "1", "FASTFLOW_THREADS": "1"}  # same kernels whatever the rank count
    ref = tmp_path / "ref"
    res = subprocess.run(_pairs_cmd(slow_teacher, ref, 1), env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(_pairs_cmd(slow_teacher, out, ranks), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("shard-*.safetensors"))) < 4:
        assert proc.poll() is None, "finished before the kill"
        time.sleep(0.02)
    _kill_tree(proc.pid)  # torchrun's workers run in process groups of their own
    proc.wait()
    done = len(list(out.glob("shard-*.safetensors")))
    assert 4 <= done < 24, done
    res = subprocess.run(_pairs_cmd(slow_teacher, out, ranks), env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "192 pairs in 24 shards" in res.stdout
    assert not list(out.glob(".shard-*"))
    assert _digest(out) == _digest(ref)
    assert len(PairDataset(str(out))) == 192


def _lying_header(path, edit) -> None:
    """Rewrite a shard's JSON header through ``edit(header)`` (the data stays as it was)."""
    raw = path.read_bytes()
    (n,) = __import__("struct").unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    path.write_bytes(__import__("struct").pack("<Q", len(new)) + new + raw[8 + n:])


_MANIFEST_CASES = {  # manifest edit → the words of the one-line refusal
    "a list": (lambda m: [m], "not a JSON object"),
    "no shard_counts": (lambda m: {k: v for k, v in m.items() if k != "shard_counts"}, "shard_counts"),
    "shards: []": (lambda m: {**m, "shards": [], "shard_counts": []}, "non-empty"),
    "complete: 'no'": (lambda m: {**m, "complete": "no"}, "not finished"),
    "../ shard": (lambda m: {**m, "shards": ["../other/shard-00000.safetensors", *m["shards"][1:]]},
                  "not a shard file of this directory"),
    "absolute shard": (lambda m: {**m, "shards": ["/etc/passwd", *m["shards"][1:]]}, "not a shard file"),
    "/dev/zero": (lambda m: {**m, "shards": ["/dev/zero", *m["shards"][1:]]}, "not a shard file"),
    "num_classes text": (lambda m: {**m, "settings": {**m["settings"], "num_classes": "3"}}, "num_classes"),
}
_HEADER_CASES = {  # shard header edit → refusal
    "length lies": (lambda h: h["z"].update(shape=[999, 2]), "offsets disagree"),
    "offsets past the data": (lambda h: h["x"].update(data_offsets=[0, 10**9]), "outside the data"),
    "dtype lies": (lambda h: h["z"].update(dtype="I64"), "offsets disagree|SHA-256"),
    "unknown dtype": (lambda h: h["z"].update(dtype="BF16"), "cannot map"),
    "negative shape": (lambda h: h["z"].update(shape=[-4, 2]), "malformed"),
    "x of another shape": (lambda h: h["x"].update(shape=[2, 4]), "one shape"),
    "no z": (lambda h: h.pop("z"), "z and x"),
}


@pytest.mark.parametrize("case", list(_MANIFEST_CASES) + list(_HEADER_CASES))
def test_a_malformed_pairs_directory_is_refused_without_reading_outside_it(tmp_path, case) -> None:
    root = tmp_path / "pairs"
    generate_pairs(_toy_teacher(), root, n=8, sample_shape=(2,), shard_size=4, progress=False)
    (tmp_path / "other").mkdir()  # another run's shard next door: must never be read
    (tmp_path / "other" / "shard-00000.safetensors").write_bytes((root / "shard-00000.safetensors").read_bytes())
    if case in _MANIFEST_CASES:
        edit, words = _MANIFEST_CASES[case]
        m = json.loads((root / "manifest.json").read_text())
        (root / "manifest.json").write_text(json.dumps(edit(m)))
    else:
        edit, words = _HEADER_CASES[case]
        _lying_header(root / "shard-00000.safetensors", edit)
    with pytest.raises(DataError, match=words):
        PairDataset(str(root))


def test_rk45_teacher_reports_progress_within_a_batch(tmp_path) -> None:
    """A batch of RK45 can take minutes: the teacher's ``progress`` hook hears every batched call
    (``fastflow pairs`` shows it as a second bar), the samples still integrating never above the batch."""
    torch.manual_seed(0)
    model = build_model({"preset": "toy2d", "hidden": 16}).eval()
    heard: list[tuple[int, int]] = []
    teacher = FlowTeacher(model=model, solver="rk45", rtol=1e-3, atol=1e-3,
                          progress=lambda nfe, active: heard.append((nfe, active)))
    manifest = generate_pairs(teacher, tmp_path / "p", n=12, sample_shape=(2,), shard_size=12, batch_size=6,
                              progress=False)
    assert heard and all(0 <= active <= 6 for _, active in heard)
    restarts = sum(1 for a, b in pairwise(heard) if b[0] < a[0])
    assert restarts == 1 and max(nfe for nfe, _ in heard) >= manifest["mean_nfe"]  # two batches, counted from 0 each
    assert teacher.identity() == FlowTeacher(model=model, solver="rk45", rtol=1e-3, atol=1e-3).identity()
