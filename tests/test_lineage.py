"""A student names the exact pairs and teachers it came from (``meta.lineage``), ``fastflow checkpoint info``
prints the chain, and ``--verify`` names what changed on disk since."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastflow.cli.main import main
from fastflow.pairs import FlowTeacher, generate_pairs
from fastflow.train import load_config, train
from fastflow.train.lineage import chain, lineage_of

TOY = ["model.preset=toy2d", "model.hidden=16", "train.batch_size=32", "train.steps=2", "train.progress=false",
       "train.tensorboard=false", "train.sample_every=0", "train.sample_n=4", "optim.warmup=0"]


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    """teacher (1-RF on toy2d) → its pairs → a reflow student initialised from it → FGD guided by that student."""
    root = tmp_path_factory.mktemp("lineage")
    teacher = train(load_config(None, [*TOY, f"out_dir={root / 'teacher'}", "data={name: toy2d, n: 256}"]))
    generate_pairs(FlowTeacher.from_checkpoint(teacher, solver="euler", steps=2), root / "pairs", n=64,
                   sample_shape=(2,), shard_size=16, progress=False)
    on_pairs = [*TOY, f"data={{name: pairs, root: '{root / 'pairs'}'}}"]
    reflow = train(load_config(None, [*on_pairs, f"out_dir={root / 'reflow'}", "objective={name: reflow}",
                                      f"train.init_from={teacher}"]))
    fgd = train(
        load_config(None, [*on_pairs, f"out_dir={root / 'fgd'}", f"objective={{name: fgd, teacher: '{reflow}'}}"])
    )
    return {"root": root, "teacher": teacher, "pairs": root / "pairs", "reflow": reflow, "fgd": fgd}


def test_the_student_records_digests_and_info_prints_the_chain(family, capsys) -> None:
    lineage = lineage_of(family["fgd"])
    assert set(lineage) == {"pairs", "teacher"} and len(lineage["pairs"]["shards"]) == 4
    assert lineage["teacher"]["checkpoint"].startswith(str(Path(family["reflow"]).resolve()))
    assert lineage["pairs"]["teacher"]["sha256"] == lineage_of(family["reflow"])["init_from"]["sha256"]
    roles = [(link.role, link.depth) for link in chain(family["fgd"])]
    assert roles[:2] == [("pairs", 0), ("pairs teacher", 1)] and ("init_from", 1) in roles
    assert main(["checkpoint", "info", str(family["fgd"]), "--verify"]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == len(roles) and "4 shards as trained on" in out
    assert main(["checkpoint", "info", str(family["teacher"])]) == 0
    assert "no recorded inputs (built-in data" in capsys.readouterr().out


def test_verify_names_a_changed_shard_and_changed_weights(family, tmp_path, capsys) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from fastflow.data.pairs import tensors_digest

    pairs = family["pairs"]
    shard = pairs / "shard-00002.safetensors"
    keep = tmp_path / "keep"
    shutil.copy2(shard, keep)
    try:  # a regenerated shard: other pairs under a valid digest of their own
        t = load_file(shard)
        t["x"] = t["x"] + 1
        save_file(t, shard, metadata={"nfe": "2.0", "count": "16",
                                      "sha256": tensors_digest({k: v.numpy() for k, v in t.items()})})
        assert main(["checkpoint", "info", str(family["fgd"]), "--verify"]) == 1
        out = capsys.readouterr().out
        assert "pairs: " in out and "changed (shard-00002.safetensors differ" in out
        shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)  # corrupted in place
        assert main(["checkpoint", "info", str(family["fgd"]), "--verify"]) == 1
        assert "shard-00002.safetensors differ" in capsys.readouterr().out
    finally:
        shutil.copy2(keep, shard)
    guide = Path(lineage_of(family["fgd"])["teacher"]["checkpoint"])
    weights = guide / lineage_of(family["fgd"])["teacher"]["weights"]
    shutil.copy2(weights, keep)
    try:
        weights.write_bytes(weights.read_bytes()[:-4] + b"\1\2\3\4")
        assert main(["checkpoint", "info", str(family["fgd"]), "--verify"]) == 1
        assert "teacher: " in (out := capsys.readouterr().out) and "the student was trained with" in out
    finally:
        shutil.copy2(keep, weights)
    moved = family["root"] / "pairs-moved"
    pairs.rename(moved)
    try:
        assert main(["checkpoint", "info", str(family["fgd"]), "--verify"]) == 0
        assert "pairs: " in (out := capsys.readouterr().out) and ": missing (" in out
    finally:
        moved.rename(pairs)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lineage=st.dictionaries(st.sampled_from(["pairs", "teacher", "init_from", "other"]), _json, max_size=3) | _json)
def test_any_recorded_lineage_is_shown_or_refused_in_one_line(family, tmp_path_factory, lineage, capfd) -> None:
    """Whatever ``meta.lineage`` holds, ``info --verify`` prints and exits 0/1, or says one line and exits 2."""
    import shutil

    from fastflow.models.checkpoint import resolve_checkpoint

    d = tmp_path_factory.mktemp("hostile") / "ckpt"
    shutil.copytree(resolve_checkpoint(family["fgd"]), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["meta"]["lineage"] = lineage
    (d / "config.json").write_text(json.dumps(cfg))
    capfd.readouterr()
    rc = main(["checkpoint", "info", str(d), "--verify"])
    err = capfd.readouterr().err
    assert rc in (0, 1, 2) and (rc != 2 or len(err.strip().splitlines()) == 1), err
