"""The third hostile-input round (issue 39): run locks that are not fastflow's, files outside a run,
outputs that name an input, values the checks let through, resumes that would not continue a run,
exceptions outside the typed hierarchy. Each probe: one line, exit 2, no file added or removed under
the probe box (nor a victim's bytes changed; an empty run folder made before a check refused may stay)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fastflow.cli import export as export_cli
from fastflow.cli import main as fastflow_cli
from fastflow.errors import ConfigError, MissingBackendError, ShapeError, TrainingError
from fastflow.models import build_model, save_model
from fastflow.pairs import CallableTeacher, generate_pairs
from fastflow.train import load_config, train
from fastflow.utils.io import atomic_save_tensors
from tests.helpers import TINY_DIGITS, tiny_config

TRAIN = ["train", "{s}/empty.yaml", *TINY_DIGITS, "train.steps=1"]


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Path:
    s = tmp_path_factory.mktemp("round3")
    torch.manual_seed(0)
    (s / "empty.yaml").write_text("{}\n")
    (s / "victim.txt").write_text("precious\n")
    train(load_config(None, [*TINY_DIGITS, "train.steps=2", f"out_dir={s / 'run'}"]))
    two = load_config(None, [*TINY_DIGITS, "model.times=2"])
    save_model(s / "meanflow", build_model(two.model))
    generate_pairs(CallableTeacher(lambda z, c: z.flip(-1), name="flip"), s / "pairs", n=4,
                   sample_shape=(1, 16, 16), shard_size=2, progress=False)
    for name, edit in (("pairs_twice", lambda m: m.update(shards=[m["shards"][0]] * 2)),):
        (s / name).mkdir()
        for f in (s / "pairs").iterdir():
            (s / name / f.name).write_bytes(f.read_bytes())
        m = json.loads((s / name / "manifest.json").read_text())
        edit(m)
        (s / name / "manifest.json").write_text(json.dumps(m))
    (s / "pairs_meta_list").mkdir()
    for f in (s / "pairs").iterdir():
        (s / "pairs_meta_list" / f.name).write_bytes(f.read_bytes())
    shard = s / "pairs_meta_list" / "shard-00000.safetensors"
    data = shard.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = ["x"]
    text = json.dumps(header).encode()
    text += b" " * (n - len(text)) if len(text) <= n else b""
    shard.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])
    (s / "list.json").write_text("[1, 2]\n")
    (s / "neg.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "block_out_channels": [-1]}))
    (s / "deep.yaml").write_text("a: " + "[" * 5000 + "\n")
    (s / "unhashable.yaml").write_text("? [a, b]: 1\n")
    (s / "nul.yaml").write_text('out_dir: "runs/a\\0b"\n')
    (s / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (s / "prompts.txt").write_text("a cat\n")
    make_lock = {"symlink": lambda p: p.symlink_to(s / "victim.txt"), "fifo": os.mkfifo, "dir": Path.mkdir,
                 "hardlink": lambda p: os.link(s / "victim.txt", p), "foreign": lambda p: p.write_text("my notes\n")}
    for kind, make in make_lock.items():
        run = s / f"lock_{kind}"
        run.mkdir()
        make(run / ".lock")
    (s / "other").mkdir()
    (s / "other" / "thesis.tex").write_text("\\documentclass{article}\n")
    return s


PROBES: list[tuple[str, list[str], str]] = [
    # 2. a lock that is not fastflow's is never followed, truncated or written
    *[(f"lock-{k}", [*TRAIN, f"out_dir={{s}}/lock_{k}"], "lock") for k in ("symlink", "fifo", "dir", "hardlink",
                                                                            "foreign")],
    ("pairs-lock-symlink", ["pairs", "{s}/meanflow", "--out", "{s}/lock_symlink", "--count", "2", "--quiet"], "lock"),
    # 3. a run's folder: never /, never someone else's files
    ("train-out-dir-root", [*TRAIN, "out_dir=/"], "root of the file system"),
    ("train-out-dir-foreign", [*TRAIN, "out_dir={s}/other"], "not a fastflow run"),
    # 5. outputs compared by identity, not spelling
    ("prompts-out-is-input", ["prompts", "{s}/nowhere", "{s}/prompts.txt", "--out", "{s}/prompts.txt"], "same file"),
    ("prompts-out-spelling", ["prompts", "{s}/nowhere", "{s}/prompts.txt", "--ids", "{s}//./prompts.txt"],
     "same file"),
    ("export-report-is-output", ["export", "{s}/meanflow", "--format", "ep", "-o", "{s}/g.pt2", "--report",
                                 "{s}/./g.pt2"], "same file"),
    ("bench-winners-out-is-input", ["bench", "winners", "{s}/list.json", "--out", "{s}/./list.json"], "same file"),
    ("bench-memory-out-is-input", ["bench", "memory", "{s}/neg.json", "--out", "{s}//neg.json"], "same file"),
    # 6. values the checks let through
    ("optim-eps-subnormal", [*TRAIN, "out_dir={s}/new", "optim.eps=1e-320"], "optim.eps"),
    ("optim-betas", [*TRAIN, "out_dir={s}/new", "optim.betas=[1.5,0.9]"], "optim.betas"),
    ("optim-weight-decay", [*TRAIN, "out_dir={s}/new", "optim.weight_decay=-1"], "optim.weight_decay"),
    ("toy2d-n", [*TRAIN, "out_dir={s}/new", "model={{preset: toy2d}}", "data={{name: toy2d, n: -5}}"], "n >= 1"),
    ("attn-head-dim", [*TRAIN, "out_dir={s}/new", "model.attn_head_dim=3"], "attn_head_dim 3 does not divide"),
    ("yaml-unhashable-override", [*TRAIN, "out_dir={s}/new", "model={{[1]: 2}}"], "mapping key"),
    ("yaml-unhashable-file", ["train", "{s}/unhashable.yaml"], "mapping key"),
    ("yaml-deep-file", ["train", "{s}/deep.yaml"], "deep.yaml"),
    ("out-dir-nul", ["train", "{s}/nul.yaml"], "NUL byte"),
    # 7. pairs manifests and shard headers
    ("pairs-listed-twice", [*TRAIN, "out_dir={s}/new", "data={{name: pairs, root: '{s}/pairs_twice'}}",
                            "objective={{name: distill}}"], "more than once"),
    ("pairs-metadata-list", [*TRAIN, "out_dir={s}/new", "data={{name: pairs, root: '{s}/pairs_meta_list'}}",
                             "objective={{name: distill}}"], "__metadata__"),
    # 9. the rest of the tracebacks
    ("bench-memory-json-list", ["bench", "memory", "{s}/list.json"], "not a diffusers model config"),
    ("bench-memory-negative-channels", ["bench", "memory", "{s}/neg.json"], "sizes >= 1"),
    ("init-from-two-time", [*TRAIN, "out_dir={s}/new", "train.init_from={s}/meanflow"], "train.init_from"),
    ("prompts-not-utf8", ["prompts", "{s}/nowhere", "{s}/latin1.txt", "--out", "{s}/t.safetensors"], "UTF-8"),
    # 10. resumes that would not continue the run
    ("resume-changed-dropout", [*TRAIN, "out_dir={s}/run", "train.steps=3", "model.dropout=0.2", "--resume"],
     "model.dropout=0.1; resuming with 0.2"),
    ("resume-changed-time", [*TRAIN, "out_dir={s}/run", "train.steps=3", "objective.time=logit_normal", "--resume"],
     "objective.time"),
    ("resume-nothing", [*TRAIN, "out_dir={s}/new", "--resume"], "holds no checkpoint"),
]


def _files(root: Path) -> dict[str, bytes | None]:
    """Every entry but directories (a run folder made before a check refused may stay, empty) and its bytes."""
    return {str(p): (p.read_bytes() if p.is_file() and not p.is_fifo() else None) for p in root.rglob("*")
            if p.is_symlink() or not p.is_dir()}


def _call(argv: list[str]) -> int:
    cli, argv = (export_cli, argv[1:]) if argv[0] == "export" else (fastflow_cli, argv)
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code)


@pytest.mark.parametrize("argv,match", [p[1:] for p in PROBES], ids=[p[0] for p in PROBES])
def test_probe_is_one_line_and_touches_nothing(box, argv, match, capsys) -> None:
    n = torch.get_num_threads()
    before = _files(box)
    try:
        rc = _call([a.format(s=box) for a in argv])
    finally:
        torch.set_num_threads(n)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and match in err, err
    assert _files(box) == before
    assert (box / "victim.txt").read_text() == "precious\n"


def test_a_lock_record_names_the_holders_work(tmp_path) -> None:
    from fastflow.errors import LockedError
    from fastflow.utils.lock import directory_lock

    with directory_lock(tmp_path, "pair generation"):
        with pytest.raises(LockedError, match=r"in use: pair generation by pid \d+ .*\(this run: training\)"):
            with directory_lock(tmp_path, "training"):
                pass
    assert not (tmp_path / ".lock").exists()


def test_train_removes_only_its_own_temporaries(tmp_path) -> None:
    run = train(tiny_config(tmp_path / "run", "train.steps=1"))
    theirs = [run / ".pipeline.abcd1234.tmp", run / ".notes.tmp", run / "checkpoints" / ".other.tmp"]
    ours = [run / ".config.yaml.abcd1234.tmp", run / "checkpoints" / ".step-00000009.tmp",
            run / "checkpoints" / ".latest.abcd1234.tmp"]
    theirs[0].mkdir()
    for p in [*theirs[1:], *ours[:1], ours[2]]:
        p.write_text("x")
    ours[1].mkdir()
    train(tiny_config(run, "train.steps=2"), resume=True)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)


def test_huge_seed_trains_and_resumes(tmp_path) -> None:
    run = train(tiny_config(tmp_path / "run", "seed=9223372036854775807", "train.steps=1"))
    train(tiny_config(run, "seed=9223372036854775807", "train.steps=2"), resume=True)


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch) -> None:
    """A finite loss with an optimiser step that breaks the weights: no checkpoint, the error names it."""
    real, calls = torch.optim.Adam.step, []

    def step(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
        out = real(self, *a, **k)
        calls.append(1)
        if len(calls) == 2:  # the last step: its loss was finite, the weights it leaves are not
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(TrainingError, match="optimiser step made non-finite weights"):
        train(tiny_config(tmp_path / "run", "train.steps=2", "train.log_every=10"))
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_typed_errors_where_a_cli_path_can_reach() -> None:
    from fastflow.bench.roofline import matmul_rate
    from fastflow.flow.guidance import _cat
    from fastflow.metrics.evaluate import aggregate_rows
    from fastflow.models.layers import Attention

    with pytest.raises(ConfigError):
        Attention(10, head_dim=3)
    with pytest.raises(ShapeError):
        _cat(torch.zeros(1), {"a": torch.zeros(1)})
    with pytest.raises(ConfigError):
        matmul_rate(torch.device("cpu"), "fp8", n=4, iters=1)
    with pytest.raises(ConfigError):
        aggregate_rows([[{"a": 1}], []], ["a"])


def test_missing_lpips_is_a_missing_backend(monkeypatch) -> None:
    import builtins

    from fastflow.objectives.lpips_distance import LPIPSDistance

    real = builtins.__import__

    def no_lpips(name, *a, **k):  # noqa: ANN001, ANN002, ANN003
        if name == "lpips":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_lpips)
    with pytest.raises(MissingBackendError):
        LPIPSDistance()


def test_export_diffusers_refuses_guidance_diffusers_does_not_apply() -> None:
    from types import SimpleNamespace

    from fastflow.export.diffusers_folder import round_trip

    student = SimpleNamespace(backbone=SimpleNamespace(pipeline="StableDiffusionPipeline"))
    with pytest.raises(ConfigError, match="above 1"):
        round_trip("nowhere", student, cfg_scale=-1.0)


def test_atomic_writes_keep_the_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        atomic_save_tensors(tmp_path / "a.safetensors", {"x": torch.zeros(1)})
    finally:
        os.umask(old)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o644


def test_resume_accepts_the_same_settings_spelled_otherwise(tmp_path) -> None:
    """Defaults written out (objective.distance=l2, data.size=16, objective.time=uniform) are the same run."""
    run = train(tiny_config(tmp_path / "run", "train.steps=1"))
    train(tiny_config(run, "train.steps=2", "objective.distance=l2", "data.size=16", "objective.time=uniform"),
          resume=True)
    with pytest.raises(ConfigError, match="objective.cond_drop=0.0; resuming with 0.1"):
        train(tiny_config(run, "train.steps=3", "objective.cond_drop=0.1"), resume=True)


def test_resume_of_a_checkpoint_written_before_an_option_existed(tmp_path) -> None:
    """A checkpoint that does not record an option added since (MeanFlow's ``kappa``, ``cfg_interval``)
    continues when the option is at its default, and is refused when the resumed config sets it."""
    import json

    from fastflow.train.state import latest_checkpoint

    mf = ["objective={name: meanflow}", "model.times=2", "model.t_scale=1"]
    run = train(tiny_config(tmp_path / "run", *mf, "train.steps=1"))
    cfg_path = latest_checkpoint(run) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("kappa", "cfg_interval"):  # as the version before these options wrote it
        del cfg["meta"]["objective_settings"][key]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"objective.kappa=\(unset\); resuming with 0.5"):
        train(tiny_config(run, *mf, "train.steps=2", "objective.kappa=0.5"), resume=True)
    train(tiny_config(run, *mf, "train.steps=2"), resume=True)


@pytest.mark.parametrize("argv,resume", [(["train", "--resume", "c.yaml", "x=1"], "yes"),
                                         (["train", "c.yaml", "--resume", "auto"], "auto"),
                                         (["train", "--resume", "auto", "c.yaml"], "auto"),
                                         (["train", "c.yaml", "x=1", "--resume"], "yes"),
                                         (["train", "c.yaml", "--resume=auto"], "auto")])
def test_resume_flag_never_takes_the_config(argv, resume) -> None:
    from fastflow.cli.main import build_parser
    from fastflow.cli.train import explicit_resume

    args = build_parser().parse_args(explicit_resume(argv))
    assert (args.config, args.resume) == ("c.yaml", resume)
