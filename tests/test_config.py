"""Config files, key=value overrides, and the CLI's one-line errors (exit 2)."""

import logging

import pytest
from helpers import ROOT, run_cli

from fastflow.errors import ConfigError
from fastflow.train.config import load_config


@pytest.mark.parametrize("name", ["digits", "toy2d", "cifar10", "cifar10-slim-reflow", "cifar10-slim-fgd"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.train.steps > 0


def test_packaged_config_by_name() -> None:
    assert load_config("toy2d").model["preset"] == "toy2d"


def test_cifar10_config_is_the_papers() -> None:
    cfg = load_config(ROOT / "configs" / "cifar10.yaml")
    assert cfg.model["preset"] == "rf-ddpmpp"
    assert (cfg.optim.lr, cfg.optim.warmup, cfg.optim.grad_clip) == (2e-4, 5000, 1.0)
    assert (cfg.train.batch_size, cfg.train.ema_rate) == (128, 0.999999)


def test_overrides_are_yaml_scalars() -> None:
    cfg = load_config(None, ["train.steps=7", "optim.lr=3e-4", "optim.betas=[0.8, 0.9]",
                             "model.ch_mult=[1,2]", "train.progress=false", "data.name=toy2d"])
    assert cfg.train.steps == 7 and cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.model["ch_mult"] == [1, 2] and cfg.train.progress is False
    # never evaluated: a Python expression stays a string and fails the type check
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(None, ["train.steps=__import__('os').getpid()"])


@pytest.mark.parametrize("override,match", [
    ("train.stepz=3", "unknown config key 'train.stepz'"),
    ("optimizer.lr=1", "unknown config key 'optimizer'"),
    ("train.steps=many", "expected int"),
    ("train.steps=1.5", "expected int"),
    ("optim.lr=fast", "expected float"),
    ("train.progress=2", "expected bool"),
    ("optim.betas=[0.9]", "expected tuple"),
    ("train.amp=fp8", "train.amp"),
    ("train.compile=on", "say which, model"),
    ("train.compile=fast", "train.compile must be one of off, model, step"),
    ("train.compile=[model]", "'train.compile': expected str or bool"),
    ("train.compile=1", "'train.compile': expected str or bool"),
    ("train.compile=true", "say which, model"),
    ("train.compile={a: 1}", "expected str or bool"),
    ("train.steps=0", "train.steps"),
    ("novalue", "key=value"),
    ("out_dir=", "out_dir must name a directory"),
    ("seed=99999999999999999999", "seed must be in"),
    ("seed=-1", "seed must be in"),
    # every section has a schema: the model config, the dataset's constructor, the objective's options
    ("model.channels=8.5", "'model.channels': expected int"),
    ("model.dropout=2", r"dropout must be in \[0, 1\)"),
    ("model.ch_mult=[1,0]", "ch_mult"),
    ("model.attn_resolutions=abc", "'model.attn_resolutions': expected tuple"),
    ("model.preset=nope", "unknown model preset"),
    ("model.fused=maybe", "model.fused must be one of auto, off, triton, cpu"),
    ("data={name: digits, size: abc}", "'data.size': expected int"),
    ("data={name: digits, bogus: 1}", "has no option"),
    ("data={name: [1]}", "unknown dataset"),
    ("objective.cond_drop=abc", "'objective.cond_drop': expected float"),
    ("objective.cond_drop=1.5", r"cond_drop must be in \[0, 1\)"),
    ("objective.distance=[l2]", "'objective.distance': expected str"),
    ("objective.distance=l3", "unknown distance"),
    ("objective.time={kind: logit_normal, scale: abc}", "'objective.time.scale': expected float"),
    ("objective.time={kind: logit_normal, scale: 0}", "scale and a must be > 0"),
    ("objective.time={kind: uniform, eps: .nan}", "finite"),
    ("objective.time=[uniform]", "'objective.time': expected str or dict"),
    ("objective={name: reflow, anneal: linear_x}", "is not a number"),
    ("objective={name: distill, k: 0}", "objective.k must be >= 1"),
    ("objective={name: fgd}", "needs objective.teacher"),
    ("objective={name: fgd, teacher: x, strict: maybe}", "'objective.strict': expected bool"),
    ("objective={name: oftsr, teacher: x, t_min: 0.5, t_max: 0.4}", "t_min must be below"),
    ("objective={name: oftsr, teacher: x, weights: [1, 2]}", "'objective.weights': expected tuple"),
])
def test_bad_overrides(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def _one_line_exit2(res) -> None:
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fastflow: error:"), res.stderr


def test_cli_bad_key_exits_2(tmp_path) -> None:
    _one_line_exit2(run_cli("train", "configs/digits.yaml", "train.bogus=1", f"out_dir={tmp_path}"))


def test_cli_bad_type_exits_2(tmp_path) -> None:
    _one_line_exit2(run_cli("train", "configs/digits.yaml", "train.steps=abc", f"out_dir={tmp_path}"))


def test_cli_missing_config_and_data_exit_2(tmp_path) -> None:
    _one_line_exit2(run_cli("train", "configs/nope.yaml"))
    _one_line_exit2(run_cli("train", "configs/cifar10.yaml", f"data.root={tmp_path / 'none'}",
                            f"out_dir={tmp_path / 'run'}"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    _one_line_exit2(run_cli("train", str(bad)))


def test_cli_model_data_mismatch_exits_2(tmp_path) -> None:
    _one_line_exit2(run_cli("train", "configs/digits.yaml", "model.preset=tiny", f"out_dir={tmp_path}"))


def test_override_can_replace_a_whole_section() -> None:
    cfg = load_config(ROOT / "configs" / "digits.yaml", ["objective={name: distill, k: 2}"])
    assert cfg.objective == {"name": "distill", "k": 2}


_BOMB = "\n".join(["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefg", "bcdefgh", strict=True)])


@pytest.mark.parametrize("text, words", [
    ("train:\n  steps: 3\nseed: 1\ntrain:\n  steps: 5\n", r"key .train. is given twice \(line 4\)"),
    ("objective:\n  name: rf\n  name: reflow\n", "key 'name' is given twice"),
    (_BOMB + "\nobjective:\n  name: rf\n  time: {kind: uniform, loc: *h}\n", "expands to more than"),
])
def test_repeated_keys_and_alias_bombs_are_refused(tmp_path, text, words) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_config(p)


def test_an_empty_config_says_it_trains_on_defaults(tmp_path, caplog) -> None:
    (tmp_path / "e.yaml").write_text("# nothing\n")
    with caplog.at_level(logging.WARNING, logger="fastflow"):
        cfg = load_config(tmp_path / "e.yaml")
    assert cfg.model == {"preset": "digits"} and "is empty: every setting takes its default" in caplog.text


def test_model_fused_is_stored_as_a_word() -> None:
    assert load_config(None, ["model.preset=tiny", "model.fused=on"]).model["fused"] == "triton"  # YAML: on is True


