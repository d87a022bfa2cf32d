"""`fastflow eval`, cost counters, latency timing, and the Inception path's clear errors."""

import json

import pytest
import torch
from helpers import run_cli

from fastflow.errors import CheckpointError, FastflowError
from fastflow.metrics.cost import count_flops, count_params
from fastflow.models import build_model, save_model
from fastflow.utils.timing import measure_latency


def test_flops_of_a_linear_layer_and_unet_scaling() -> None:
    class Lin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(8, 4, bias=False)

        def forward(self, x, t, cond=None):
            return self.l(x)

    assert count_flops(Lin(), torch.randn(3, 8)) == 2 * 3 * 8 * 4
    m = build_model({"preset": "tiny"})
    f1, f2 = count_flops(m, torch.randn(1, 3, 8, 8)), count_flops(m, torch.randn(2, 3, 8, 8))
    assert f1 > 0 and f2 == 2 * f1
    assert count_params(torch.nn.Linear(3, 2)) == 8


def test_measure_latency_cpu() -> None:
    lat = measure_latency(lambda: torch.randn(100, 100) @ torch.randn(100, 100), iters=10)
    assert lat.calls >= 10 and 0 < lat.p50_ms <= lat.p90_ms <= lat.p99_ms


def test_eval_cli_reports_everything(tmp_path) -> None:
    save_model(tmp_path, build_model({"preset": "digits-small"}))
    out = tmp_path / "e.json"
    res = run_cli("eval", str(tmp_path), "--solver", "euler", "--steps", "2", "--n", "64", "--seeds", "2",
                  "--json", str(out))
    assert res.returncode == 0, res.stderr
    for col in ("digits_fd", "digits_coverage", "straightness", "params", "gflops_per_sample", "latency_ms_b1", "nfe"):
        assert col in res.stdout
    d = json.loads(out.read_text())
    assert f"{d['digits_fd']:.4g} ± {d['digits_fd_sd']:.2g}" in res.stdout  # seed metrics as mean ± sd
    assert d["nfe"] == 2 and d["params"] == 187729 and d["digits_fd"] > 0 and d["seeds"] == [0, 1]
    fds = d["digits_fd_per_seed"]  # two noise seeds: two different sample sets
    assert len(fds) == 2 and fds[0] != fds[1] and d["digits_fd"] == pytest.approx(sum(fds) / 2)
    assert d["digits_fd_sd"] == pytest.approx(abs(fds[0] - fds[1]) / 2**0.5)
    assert d["gflops_per_sample"] == pytest.approx(2 * d["gflops_per_call"])
    assert {"p50_ms", "p90_ms", "p99_ms"} <= set(d["latency"])


def test_inception_needs_local_weights(monkeypatch) -> None:
    from fastflow.metrics.inception import ENV, inception_features

    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises((CheckpointError, FastflowError), match="pytorch-fid|Inception weights"):
        inception_features()
