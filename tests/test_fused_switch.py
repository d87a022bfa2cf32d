"""The one kernel switch, ``auto | off | triton | cpu``: the CPU block kernel serves ``sample``,
``pairs`` and ``eval`` through ``--fused cpu`` with eager's results, training refuses it, and
``auto`` reads the measured winners table (user cache over the shipped one; a hostile table is one
line) that ``fastflow bench winners --switch-table`` writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastflow.errors import ConfigError
from fastflow.fused import apply, switch
from fastflow.fused.auto import FORMAT, SHIPPED, auto_path, check_table, size_class
from fastflow.models import build_model, save_model
from tests.helpers import run_cli

UNET = {"arch": "unet", "in_channels": 1, "resolution": 8, "channels": 8, "num_res_blocks": 1, "ch_mult": (1, 2),
        "attn_resolutions": (4,), "dropout": 0.0}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    m = build_model(UNET)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    d = tmp_path_factory.mktemp("ckpt")
    save_model(d, m, m)
    return d


def test_sample_with_the_cpu_kernel_equals_eager(ckpt, tmp_path) -> None:
    out = {}
    for mode in ("off", "cpu"):
        r = run_cli("sample", str(ckpt), "--solver", "rk45", "--n", "8", "--fused", mode, "--out",
                    str(tmp_path / f"{mode}.npz"), timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        out[mode] = np.load(tmp_path / f"{mode}.npz")["x"]
    assert "fused kernels: cpu (fused=cpu" in r.stderr and "CpuResBlock" in r.stderr
    assert np.abs(out["cpu"] - out["off"]).max() <= 1e-4


def test_pairs_with_the_cpu_kernel_equal_eager(ckpt, tmp_path) -> None:
    from fastflow.data.pairs import PairDataset

    xs = {}
    for mode in ("off", "cpu"):
        r = run_cli("pairs", str(ckpt), "--out", str(tmp_path / mode), "--count", "6", "--solver", "euler", "--steps",
                    "4", "--fused", mode, "--quiet", timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        data = PairDataset(str(tmp_path / mode))
        xs[mode] = data.get(torch.arange(len(data)))
    torch.testing.assert_close(xs["cpu"].z, xs["off"].z, rtol=0, atol=0)  # the same noise
    assert float((xs["cpu"].x - xs["off"].x).abs().max()) <= 1e-4


def test_training_refuses_the_cpu_kernel_in_one_line(tmp_path) -> None:
    r = run_cli("train", "digits", f"out_dir={tmp_path / 'r'}", "model.fused=cpu")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "inference-only" in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()


def test_cpu_mode_refusals(monkeypatch) -> None:
    mlp = build_model({"arch": "mlp", "dim": 2})
    with pytest.raises(ConfigError, match="no fastflow UNet blocks"):
        apply(mlp, "cpu", "cpu")
    with pytest.raises(ConfigError, match="inference-only"):
        switch.decide("cpu", "cpu", inference=False)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        switch.decide("cpu", "cuda")


def _table(tmp_path, entries) -> None:
    (tmp_path / "fused-winners.json").write_text(json.dumps({"format": FORMAT, "version": 1, "entries": entries}))


def test_auto_reads_the_users_winners_table(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FASTFLOW_CACHE", str(tmp_path))
    monkeypatch.setattr(switch, "_said", set())
    _table(tmp_path, [{"device": "cpu", "size": "small", "path": "cpu", "source": "bench.json"}])
    m = build_model(UNET)
    d = apply(m, "auto", "cpu")
    assert d.path == "cpu" and "winner for small models on cpu in fused-winners.json" in d.reason
    assert "fused kernels: cpu (fused=auto: winner" in capsys.readouterr().err
    assert apply(build_model(UNET), "auto", "cpu", inference=False).path == "off"  # training: never cpu
    assert apply(build_model({"arch": "mlp", "dim": 2}), "auto", "cpu").path == "off"  # nothing to put it into
    assert auto_path("cpu", 10**8, True, False, "")[0] == "off"  # a large model: no entry, the default
    assert auto_path("cuda", 10, True, False, "no CUDA")[0] == "off"  # default triton, but it cannot run here
    assert auto_path("cuda", 10, True, True, "")[0] == "triton"
    assert size_class(4_000_000) == "small" and size_class(4_000_001) == "large"


def test_the_shipped_table_is_measured_and_picks_the_cpu_kernel_for_small_cpu_models(tmp_path, monkeypatch) -> None:
    """``fastflow/fused/winners.json`` is what ``fastflow bench winners --switch-table`` made of
    ``benchmarks/results/cpu-fused-paths.json``; without a user table, auto follows it."""
    from pathlib import Path

    from fastflow.bench.winners import switch_table, winners

    shipped = check_table(json.loads(SHIPPED.read_text()), str(SHIPPED))
    results = Path(__file__).resolve().parents[1] / "benchmarks/results/cpu-fused-paths.json"
    remade = switch_table(winners([results]), ["benchmarks/results/cpu-fused-paths.json"])["entries"]
    assert [(e["device"], e["size"], e["path"]) for e in shipped] == [(e["device"], e["size"], e["path"])
                                                                      for e in remade]
    monkeypatch.setenv("FASTFLOW_CACHE", str(tmp_path))  # no user table: the shipped one
    want = next(e["path"] for e in shipped if e["device"] == "cpu" and e["size"] == "small")
    assert auto_path("cpu", 200_000, True, False, "")[0] == want == "cpu"


@settings(max_examples=80, deadline=None, derandomize=True)
@given(doc=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                        max_leaves=12),
       entry=st.dictionaries(st.sampled_from(["device", "size", "path", "source"]),
                             st.sampled_from(["cpu", "cuda", "small", "large", "off", "triton", "x", 3]), max_size=4))
def test_a_hostile_table_is_one_config_error(doc, entry) -> None:
    for d in (doc, {"format": FORMAT, "version": 1, "entries": [entry]}):
        try:
            check_table(d, "t.json")
        except ConfigError as e:
            assert "\n" not in str(e)


def test_winners_write_the_switch_table(tmp_path) -> None:
    rows = [{"verb": "sample", "device_kind": "cpu", "size": "small", "solver": "one_step", "steps": 1, "batch": b,
             "fused": f, "ms_per_item": t} for b, f, t in ((1, "off", 2.0), (1, "cpu", 1.0), (8, "off", 1.0),
                                                          (8, "cpu", 0.9))]
    (tmp_path / "paths.json").write_text(json.dumps({"bench": "fused-paths", "rows": rows}))
    table = tmp_path / "table.json"
    r = run_cli("bench", "winners", str(tmp_path / "paths.json"), "--out", str(tmp_path / "w.json"),
                "--switch-table", str(table))
    assert r.returncode == 0, r.stderr
    entries = check_table(json.loads(table.read_text()), str(table))
    assert [(e["device"], e["size"], e["path"], e["cases"]) for e in entries] == [("cpu", "small", "cpu", 2)]
    (tmp_path / "bad.json").write_text("{")
    r = run_cli("bench", "winners", str(tmp_path / "bad.json"), "--out", str(tmp_path / "w2.json"),
                "--switch-table", str(tmp_path / "t2.json"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0


def test_latency_suite_times_the_cpu_kernel_path(ckpt) -> None:
    """``fastflow bench latency --backends cpuk``: the eager models with the CPU block kernel in."""
    from fastflow.bench.latency import latency_suite, split_backend
    from fastflow.models import load_model

    assert split_backend("cpuk") == ("cpu", "eager") and split_backend("fused+aoti") == ("triton", "aoti")
    m = load_model(ckpt)
    rows = latency_suite(m, m, torch.randn(2, 1, 8, 8), backends=("eager", "cpuk"), euler_ns=(2,), heun_ns=(),
                         rk45=False, iters=2, warmup=1)
    got = {(r["backend"], r["solver"], r.get("steps")) for r in rows}
    assert {("cpuk", "call", None), ("cpuk", "euler", 1), ("cpuk", "euler", 2)} <= got
