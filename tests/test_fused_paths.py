"""The fused kernels in every path that runs a model (``fastflow.fused.apply``, ``model.fused``,
``--fused``): the switch's decisions, training steps fused vs unfused (fastflow and diffusers
UNets), a fused training run end to end, fused export, the benches, and forward-mode AD through
the fused ops. The kernels run under ``TRITON_INTERPRET=1`` here (set by conftest without CUDA)."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fastflow.data.base import Batch
from fastflow.errors import ConfigError, MissingBackendError
from fastflow.fused import (
    apply,
    attention,
    attention_ref,
    decide,
    group_norm,
    group_norm_ref,
    is_fused,
    split_spec,
    switch,
)
from fastflow.models import build_model
from fastflow.objectives import build_objective
from tests.helpers import run_cli, tiny_config, tiny_diffusers_unet

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU interpreter checks")


def test_auto_is_off_on_cpu_and_says_why(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(switch, "_said", set())  # the line is printed once per process (the session's table: empty)
    m = build_model({"preset": "tiny"})
    d = apply(m, "auto", "cpu")
    assert not d.active and d.path == "off" and "default for cpu" in d.reason and not is_fused(m)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert decide("auto", "cpu")[0] == "off"
    assert decide("off", "cpu") == ("off", "asked for off")
    with pytest.raises(MissingBackendError, match="fused=triton: the kernels run on CUDA"):
        apply(m, "on", "cpu")
    with pytest.raises(ConfigError, match="model.fused must be one of auto, off, triton, cpu"):
        split_spec({"preset": "tiny", "fused": "yes"})
    assert split_spec({"preset": "tiny", "fused": "on"}) == ({"preset": "tiny"}, "triton")
    assert "fused kernels: off (fused=auto" in capsys.readouterr().err


def _perturbed(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in model.parameters():  # output convs start at zero; make every path count
        nn.init.normal_(p, std=0.2)
    return model


def _train_step(model: nn.Module, batch: Batch) -> tuple[float, dict[str, torch.Tensor]]:
    objective = build_objective({"name": "rf"}, num_classes=0, device=torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # Adam's first step is ≈ lr·sign(g): it magnifies ties
    torch.manual_seed(7)
    loss, _ = objective(model, batch, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    return float(loss.detach()), grads


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
def test_training_step_of_tiny_unet_fused_equals_unfused(dtype, tol) -> None:
    plain = _perturbed(build_model({"preset": "tiny"})).to(dtype)
    fused = copy.deepcopy(plain)
    assert apply(fused, "on", "cpu").active and is_fused(fused)
    assert fused.state_dict().keys() == plain.state_dict().keys()  # checkpoints load either way
    batch = Batch((torch.rand(2, 3, 8, 8) * 2 - 1).to(dtype))
    (l0, g0), (l1, g1) = _train_step(plain, batch), _train_step(fused, batch)
    assert abs(l0 - l1) <= tol * max(1.0, abs(l0))
    for name in g0:
        torch.testing.assert_close(g1[name].float(), g0[name].float(), atol=tol, rtol=tol * 10, msg=name)
    for (name, p0), p1 in zip(plain.state_dict().items(), fused.state_dict().values(), strict=True):
        torch.testing.assert_close(p1.float(), p0.float(), atol=tol, rtol=tol, msg=name)


def test_training_step_of_tiny_diffusers_unet_fused_equals_unfused() -> None:
    pytest.importorskip("diffusers", reason="diffusers not installed")
    plain = tiny_diffusers_unet()
    fused = copy.deepcopy(plain)
    assert apply(fused, "on", "cpu").active and is_fused(fused)
    x, emb = torch.randn(1, 4, 4, 4), torch.randn(1, 3, 24)  # small: the interpreter runs every program
    losses, grads = [], []
    for m in (plain, fused):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        loss = m(x, 10, emb).sample.square().mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
        opt.step()
        losses.append(float(loss))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=2e-4, rtol=2e-3, msg=name)
    for (name, p0), p1 in zip(plain.state_dict().items(), fused.state_dict().values(), strict=True):
        torch.testing.assert_close(p1, p0, atol=2e-5, rtol=1e-4, msg=name)


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory):
    """A few fused training steps of the tiny digits UNet through the CLI."""
    from fastflow.train.config import dump_config

    root = tmp_path_factory.mktemp("fused-run")
    cfg = tiny_config(root / "run", "train.steps=2", "train.ckpt_every=2", "train.batch_size=4", "train.sample_n=2",
                      "model.fused=on")
    (root / "cfg.yaml").write_text(dump_config(cfg))
    res = run_cli("train", str(root / "cfg.yaml"))
    assert res.returncode == 0, res.stderr
    return root / "run", res


# ~100 s: fused training under the Triton interpreter; the fused training-step tests stay in make test
@pytest.mark.slow
def test_fused_training_runs_end_to_end_and_samples_unfused(fused_run, tmp_path) -> None:
    run, res = fused_run
    assert "fused kernels: triton (fused=triton" in res.stderr and "FusedGroupNorm" in res.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["fused"] == "triton"
    outs = {}
    for mode in ("on", "off"):
        out = tmp_path / f"s-{mode}.npz"
        r = run_cli("sample", str(run), "--n", "2", "--solver", "euler", "--steps", "2", "--fused", mode,
                    "--out", str(out))
        assert r.returncode == 0, r.stderr
        outs[mode] = torch.from_numpy(__import__("numpy").load(out)["x"])
    torch.testing.assert_close(outs["on"], outs["off"], atol=1e-4, rtol=1e-4)


def test_fused_on_without_a_kernel_device_is_one_line(tmp_path) -> None:
    from fastflow.train import train

    run = train(tiny_config(tmp_path / "run", "train.steps=1", "train.batch_size=4", "train.sample_n=2"))
    env_off = {"TRITON_INTERPRET": "0"}
    r = run_cli("sample", str(run), "--n", "2", "--fused", "on", "--out", str(tmp_path / "x.png"), env=env_off)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "fused=triton" in r.stderr, r.stderr
    assert not (tmp_path / "x.png").exists()
    r = run_cli("train", "digits", f"out_dir={tmp_path / 'r'}", "model.fused=maybe", env=env_off)
    assert r.returncode == 2 and "model.fused must be one of auto, off, triton, cpu" in r.stderr


@pytest.mark.slow  # an AOTInductor compile; test_export's .pt2 test and the runner's ctest compile .pt2 in make test
def test_pt2_exported_fused_keeps_the_ops_and_equals_the_eager_generator(fused_run, tmp_path) -> None:
    from fastflow.export.formats import load_pt2, read_pt2_spec

    run, _ = fused_run
    out, report = tmp_path / "g.pt2", tmp_path / "g.json"
    r = run_cli("-m", "fastflow.cli.export", str(run), "--format", "pt2", "-o", str(out), "--batch", "2",
                "--fused", "on", "--validate", "--report", str(report), "--device", "cpu", timeout=900)
    assert r.returncode == 0, r.stderr
    assert "validation passed" in r.stdout
    spec = read_pt2_spec(out)
    assert spec.fused == "op" and json.loads(report.read_text())["settings"]["fused"] == "op"
    from fastflow.export.generator import Generator
    from fastflow.models import load_model

    z = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        want = Generator(load_model(run), 1)(z)
    torch.testing.assert_close(load_pt2(out, torch.device("cpu"))(z), want, atol=1e-4, rtol=1e-4)
    from fastflow.bench.latency import RUNNER_BUILD_PATH

    if RUNNER_BUILD_PATH.is_file():  # fastflow-run cannot call ops only Python registers: one line, exit 2
        res = subprocess.run([str(RUNNER_BUILD_PATH), str(out), "--info"], capture_output=True, text=True)
        assert res.returncode == 2 and "Python-registered fused ops" in res.stderr, res.stderr
    r = run_cli("-m", "fastflow.cli.export", str(run), "--format", "onnx", "-o", str(tmp_path / "g.onnx"),
                "--batch", "2", "--fused", "on", "--device", "cpu")
    assert r.returncode == 0 and "keeps the PyTorch reference decomposition" in r.stdout, r.stderr


def test_bench_train_on_cpu_times_the_unfused_paths_and_says_why(tmp_path) -> None:
    out = tmp_path / "t.json"
    r = run_cli("bench", "train", "--presets", "tiny", "--paths", "eager,fused", "--batch", "2", "--steps", "2",
                "--warmup", "0", "--device", "cpu", "--out", str(out), env={"TRITON_INTERPRET": "0"})
    assert r.returncode == 0, r.stderr
    assert "note: skipping fused: the kernels run on CUDA" in r.stdout
    data = json.loads(out.read_text())
    assert [row["path"] for row in data["rows"]] == ["eager"] and data["skipped"] == ["fused"]
    assert data["rows"][0]["step_p50_ms"] > 0 and data["rows"][0]["first_loss"] > 0


def test_bench_train_fused_rows_compute_the_same_loss_under_the_interpreter() -> None:
    from fastflow.bench.train_step import train_step_suite

    rows = train_step_suite(["tiny"], 2, torch.device("cpu"), ["eager", "fused"], steps=1, warmup=0)
    assert [r["path"] for r in rows] == ["eager", "fused"]
    assert rows[1]["losses"] == pytest.approx(rows[0]["losses"], rel=1e-5)
    assert rows[1]["rel_diff"] < 1e-5


def test_bench_train_bf16_rows_and_pair_rates_on_cpu(tmp_path) -> None:
    from fastflow.models.checkpoint import save_model
    from fastflow.models.presets import build_model
    from fastflow.train.accel import cpu_bf16

    torch.manual_seed(0)
    save_model(tmp_path / "teacher", build_model({"preset": "tiny"}))
    out = tmp_path / "t.json"
    r = run_cli("bench", "train", "--presets", "tiny", "--paths", "eager,bf16", "--batch", "2", "--steps", "1",
                "--warmup", "0", "--device", "cpu", "--out", str(out), "--teacher", str(tmp_path / "teacher"),
                "--pairs", "4", "--solvers", "euler", "--pair-paths", "eager,fused")
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    native = cpu_bf16()[0]
    assert [row["path"] for row in data["rows"]] == (["eager", "bf16"] if native else ["eager"])
    if native:
        assert 1e-4 < data["rows"][1]["rel_diff"] < 0.05  # bf16 rounding shows; the same loss
    else:
        assert "bf16 paths skipped" in r.stdout
    pairs = data["pairs"]
    assert [p["path"] for p in pairs] == ["eager", "fused"] and all(p["pairs_per_cpu_s"] > 0 for p in pairs)
    assert pairs[1]["max_abs_diff"] < 1e-4 and data["threads"] >= 1


def test_latency_suite_times_fused_backends_beside_the_plain_ones() -> None:
    from fastflow.bench.latency import latency_suite

    s, t = build_model({"preset": "tiny"}), build_model({"preset": "tiny"})
    rows = latency_suite(s, t, torch.randn(1, 3, 8, 8), ["eager", "fused"], euler_ns=(2,), heun_ns=(), rk45=False,
                         iters=1, warmup=0)
    assert {(r["backend"], r["solver"]) for r in rows} == {(b, k) for b in ("eager", "fused")
                                                           for k in ("call", "euler")}
    assert not is_fused(s)  # the fused rows time a copy
    help_text = run_cli("bench", "latency", "--help").stdout
    assert all(b in help_text for b in ("fused+compiled", "fused+cudagraph", "fused+aoti"))


def test_jvp_through_the_fused_ops_equals_the_float64_reference() -> None:
    torch.manual_seed(3)
    x, w, b = torch.randn(2, 16, 4, 4), torch.randn(16), torch.randn(16)
    s, sh = torch.randn(2, 16), torch.randn(2, 16)
    tx, tw = torch.randn_like(x), torch.randn_like(w)
    f = lambda x, w: group_norm(x, w, b, 4, scale=s, shift=sh, silu=True)  # noqa: E731
    ref = lambda x, w: group_norm_ref(x, w, b.double(), 4, scale=s.double(), shift=sh.double(), silu=True)  # noqa: E731
    out, tan = torch.func.jvp(f, (x, w), (tx, tw))
    want, want_tan = torch.func.jvp(ref, (x.double(), w.double()), (tx.double(), tw.double()))
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tan.double(), want_tan, atol=1e-5, rtol=1e-5)
    assert want_tan.abs().max() > 1  # not a vacuous comparison
    q, k, v = (torch.randn(2, 2, 8, 16) for _ in range(3))
    tq, tk, tv = (torch.randn(2, 2, 8, 16) for _ in range(3))
    out, tan = torch.func.jvp(attention, (q, k, v), (tq, tk, tv))
    want, want_tan = torch.func.jvp(attention_ref, tuple(t.double() for t in (q, k, v)),
                                    tuple(t.double() for t in (tq, tk, tv)))
    torch.testing.assert_close(tan.double(), want_tan, atol=1e-5, rtol=1e-5)
    assert want_tan.abs().max() > 0.5
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        tan = fwAD.unpack_dual(f(fwAD.make_dual(x, tx), w)).tangent
    torch.testing.assert_close(tan.double(), torch.func.jvp(lambda x: ref(x, w.double()), (x.double(),),
                                                            (tx.double(),))[1], atol=1e-5, rtol=1e-5)


def test_jvp_through_a_fused_unet_equals_the_unfused_one() -> None:
    plain = _perturbed(build_model({"preset": "tiny"}))
    fused = copy.deepcopy(plain)
    apply(fused, "on", "cpu")
    x, t, tx = torch.randn(2, 3, 8, 8), torch.full((2,), 0.3), torch.randn(2, 3, 8, 8)
    _, t0 = torch.func.jvp(lambda x: plain(x, t), (x,), (tx,))
    _, t1 = torch.func.jvp(lambda x: fused(x, t), (x,), (tx,))
    torch.testing.assert_close(t1, t0, atol=1e-4, rtol=1e-4)


def test_winners_pick_the_fastest_path_per_case(tmp_path) -> None:
    from fastflow.bench.winners import winners

    (tmp_path / "k.json").write_text(json.dumps({"group_norm": [
        {"op": "group_norm+silu", "shape": [1, 64, 8, 8], "dtype": "float16", "fused_ms": 1.0, "eager_ms": 3.0,
         "copy_ms": 0.5}], "attention": [
        {"op": "attention", "shape": [1, 8, 64, 64, 40], "dtype": "float16", "fused_ms": 2.0,
         "sdpa_flash_ms": 1.0, "sdpa_math_ms": None, "best_sdpa_ms": 1.0}]}))
    (tmp_path / "t.json").write_text(json.dumps({"rows": [
        {"preset": "tiny", "batch": 2, "path": "eager", "step_p50_ms": 4.0},
        {"preset": "tiny", "batch": 2, "path": "fused", "step_p50_ms": 2.0}]}))
    cases = winners([tmp_path / "k.json", tmp_path / "t.json"])
    assert [(c["bench"], c["winner"]) for c in cases] == [("kernels", "fused"), ("kernels", "sdpa_flash"),
                                                         ("train", "fused")]
    assert cases[0]["margin_over_next"] == 3.0 and "copy" not in cases[0]["times_ms"]
    r = run_cli("bench", "winners", str(tmp_path / "t.json"), "--out", str(tmp_path / "w.json"))
    assert r.returncode == 0 and json.loads((tmp_path / "w.json").read_text())["cases"][0]["winner"] == "fused"
    (tmp_path / "bad.json").write_text("[1, 2]")
    r = run_cli("bench", "winners", str(tmp_path / "bad.json"), "--out", str(tmp_path / "w2.json"))
    assert r.returncode == 2 and "not a bench JSON" in r.stderr


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["--paths", "--pair-paths", "--solvers", "--pairs", "--teacher"]), max_size=3),
       st.lists(st.text(max_size=10), min_size=3, max_size=3))
def test_bench_train_flags_property(flags: list[str], values: list[str]) -> None:
    """Any ``bench train`` flag text parses to checked values or ends in argparse's exit 2 (one line)."""
    import argparse

    from fastflow.bench.train_step import PAIR_PATHS, PATHS
    from fastflow.cli import bench as bench_cli

    parser = argparse.ArgumentParser(exit_on_error=False)
    bench_cli.add_parser(parser.add_subparsers())
    argv = ["bench", "train"] + [f"{f}={v}" for f, v in zip(flags, values, strict=False)]
    try:
        args = parser.parse_args(argv)
    except (SystemExit, argparse.ArgumentError):
        return
    assert set(args.paths) <= set(PATHS) and set(args.pair_paths) <= set(PAIR_PATHS)
    assert set(args.solvers) <= {"rk45", "euler"} and args.pairs >= 1
    assert args.teacher is None or isinstance(args.teacher, str)
