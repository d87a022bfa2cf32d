"""Property-based tests of every config key: a hostile value for any key of any schema — the training
loop's sections, every model architecture, every dataset's options, every objective's options —
ends in a valid config (that builds) or one line and exit 2 through the CLI boundary. ``make test``
runs a bounded number of examples; the ``slow`` variant (``make test-all``) goes deeper."""

from __future__ import annotations

import inspect
import os
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastflow.data import DATASETS, build_dataset, dataset_class
from fastflow.fused import split_spec
from fastflow.models.mlp import MLPConfig
from fastflow.models.presets import build_model
from fastflow.models.unet import UNetConfig
from fastflow.objectives import OPTIONS, build_objective
from fastflow.train.config import TrainConfig, load_config
from tests.fuzz import BOUNDED, cli_outcome, examples, override_texts, schema_keys
from tests.helpers import TINY_DIGITS

TOY = ["model={arch: mlp, hidden: 8, depth: 1}", "data={name: toy2d, n: 64}", "train.batch_size=8"]


def _cases() -> list[tuple[list[str], str]]:
    """``(base overrides, key)`` for every key of every schema."""
    cases = [(TINY_DIGITS, k) for k in schema_keys(TrainConfig, "")]
    cases += [(TINY_DIGITS, f"model.{k}") for k in [*schema_keys(UNetConfig, ""), "preset", "arch", "fused"]]
    cases += [(TOY, f"model.{k}") for k in schema_keys(MLPConfig, "")]
    for name in DATASETS:
        params = [p for p in inspect.signature(dataset_class(name).__init__).parameters if p != "self"]
        cases += [([*TINY_DIGITS, f"data.name={name}"], f"data.{p}") for p in params]
    for name, options in OPTIONS.items():
        cases += [([*TINY_DIGITS, f"objective.name={name}"], f"objective.{k}") for k in options]
    return cases


CASES = _cases()


def _small(value: Any) -> bool:
    """Whether every number in a config section is small enough to build a dataset from it here."""
    if isinstance(value, dict):
        return all(_small(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return len(value) < 64 and all(_small(v) for v in value)
    return not isinstance(value, (int, float)) or abs(value) <= 4096


def _validate(base: list[str], key: str, text: str) -> None:
    cfg = load_config(None, [*base, f"{key}={text}"])
    spec, _ = split_spec(cfg.model)
    if spec.get("arch") != "sd":  # a diffusers folder path: its loading has tests of its own
        with torch.device("meta"):
            build_model(spec)
    root = next((cfg.data[k] for k in ("root", "path") if isinstance(cfg.data.get(k), str)), "")
    scans = root and os.path.isdir(root)  # an existing folder ("/", ".."): walked file by file, slowly
    if _small(cfg.data) and not scans and cfg.data.get("name") in ("digits", "toy2d", "sr", "npz", "folder", "pairs",
                                                                  "cifar10"):
        build_dataset(cfg.data)
    build_objective(cfg.objective)


def _property(case: int, text: str, capsys: Any) -> None:
    base, key = CASES[case]
    cli_outcome(lambda: _validate(base, key, text), capsys)


def test_every_schema_key_is_covered() -> None:
    keys = {k for _, k in CASES}
    assert {"optim.eps", "train.steps", "seed", "out_dir", "model.attn_head_dim", "model.hidden", "data.n",
            "data.root", "objective.time", "objective.teacher", "objective.weights"} <= keys
    assert len(keys) > 80


@examples(200)
@given(case=st.integers(0, len(CASES) - 1), text=override_texts)
def test_hostile_config_values_are_valid_or_one_line(case, text, capsys) -> None:
    _property(case, text, capsys)


@pytest.mark.slow
@settings(BOUNDED, max_examples=5000, derandomize=False)
@given(case=st.integers(0, len(CASES) - 1), text=override_texts)
def test_hostile_config_values_deep(case, text, capsys) -> None:
    _property(case, text, capsys)


@examples(60)
@given(text=st.one_of(st.text(max_size=200), st.sampled_from(["? [a, b]: 1\n", "a: " + "[" * 5000, "\xff\xfe"])))
def test_hostile_yaml_config_files_are_valid_or_one_line(tmp_path_factory, text, capsys) -> None:
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape") if "\xff" not in text else b"\xff\xfe{")
    cli_outcome(lambda: load_config(path, []), capsys)


@examples(60)
@given(case=st.integers(0, len(CASES) - 1), text=override_texts)
def test_config_show_of_hostile_values_is_valid_or_one_line(case, text, capsys) -> None:
    """``fastflow config show`` resolves what ``train`` would: any override ends in YAML or one line."""
    import argparse

    from fastflow.cli.config import run

    base, key = CASES[case]
    if key.startswith("objective.teacher") or key.startswith("data."):  # loads checkpoints / walks folders
        return
    cli_outcome(lambda: run(argparse.Namespace(config=None, overrides=[*base, f"{key}={text}"])), capsys)
