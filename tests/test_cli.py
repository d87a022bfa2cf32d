"""`fastflow sample`: PNG and NPZ output, reported NFE (bad input: tests/test_cli_bad_input.py)."""

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from fastflow.models import build_model, save_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    save_model(d, build_model({"preset": "digits-small", "num_classes": 10}))
    return d


@pytest.mark.parametrize("solver,extra,nfe", [("euler", ["--steps", "3"], 3), ("heun", ["--steps", "3"], 5),
                                              ("one_step", [], 1)])
def test_sample_png_reports_nfe(tmp_path, ckpt, solver, extra, nfe) -> None:
    out = tmp_path / "grid.png"
    res = run_cli("sample", str(ckpt), "--solver", solver, *extra, "--n", "8", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert f"NFE={nfe}" in res.stdout and "wall=" in res.stdout
    assert Image.open(out).size[0] > 16


def test_sample_npz_with_label_and_cfg(tmp_path, ckpt) -> None:
    out = tmp_path / "s.npz"
    res = run_cli("sample", str(ckpt), "--solver", "rk45", "--rtol", "1e-3", "--atol", "1e-3",
                  "--n", "4", "--label", "7", "--cfg", "2.0", "--out", str(out))
    assert res.returncode == 0, res.stderr
    z = np.load(out)
    assert z["x"].shape == (4, 1, 16, 16) and (z["label"] == 7).all() and int(z["nfe"]) > 1
    assert np.isfinite(z["x"]).all()


def test_every_verb_is_a_module_and_every_option_has_help() -> None:
    """``fastflow/cli/``: one module per verb (``add_parser``/``run``); no option without help text."""
    import argparse

    from fastflow.cli import export
    from fastflow.cli.main import VERBS, build_parser

    assert all(callable(getattr(v, "add_parser", None)) for v in VERBS)

    def parsers(p: argparse.ArgumentParser):
        yield p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for child in a.choices.values():
                    yield from parsers(child)

    missing = [f"{p.prog} {a.option_strings or a.dest}" for root in (build_parser(), export.build_parser())
               for p in parsers(root) for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert not missing, missing
    for root in (build_parser(), export.build_parser()):  # every help page renders and shows the defaults
        for p in parsers(root):
            assert issubclass(p.formatter_class, argparse.ArgumentDefaultsHelpFormatter), p.prog
            p.format_help()
            twice = [a.dest for a in p._actions  # "(default: %(default)s)" names it twice, once more is a repeat
                     if (p._get_formatter()._get_help_string(a) or "").count("default") > 2]
            assert not twice, (p.prog, twice)  # a help text that names its default gets no second one
    assert "(default: 16)" in build_parser()._subparsers._group_actions[0].choices["sample"].format_help()
    assert export.build_parser().description.endswith("2 bad input or a missing backend.")


def test_every_tool_answers_version() -> None:
    import fastflow

    for args in (["--version"], ["-m", "fastflow.cli.export", "--version"]):
        r = run_cli(*args)
        assert r.returncode == 0 and fastflow.__version__ in r.stdout and "torch" in r.stdout, r


def test_config_show_resolves_every_default_and_the_reference_is_current(tmp_path) -> None:
    """``fastflow config show``: the preset expanded, the data set's and objective's defaults filled in,
    overrides applied; ``docs/config.md`` is what ``fastflow config doc`` prints (regenerate it when a
    schema changes); a bad key is one line, exit 2."""
    from pathlib import Path

    import yaml

    from fastflow.cli.config import reference

    r = run_cli("config", "show", "digits", "train.steps=7", "model.fused=off")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["train"]["steps"] == 7 and cfg["model"]["arch"] == "unet" and cfg["model"]["channels"] == 16
    assert cfg["model"]["fused"] == "off" and cfg["data"] == {"name": "digits", "size": 16}
    assert cfg["objective"]["name"] == "rf" and cfg["objective"]["time"]["kind"] == "uniform"
    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text() == reference(), "docs/config.md is stale: fastflow config doc > docs/config.md"
    r = run_cli("config", "show", "digits", "train.stpes=7")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "stpes" in r.stderr, r.stderr
