"""Training loop: objective formula, loss decrease, EMA, bit-exact resume, SIGKILL, DDP, toy quality."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_DIGITS, cli_env, read_log, tiny_config
from safetensors.torch import load_file

from fastflow.data import Batch
from fastflow.flow import generate
from fastflow.flow.time import TimeSampler
from fastflow.metrics import mmd_rbf, sliced_wasserstein
from fastflow.models import build_model, load_model
from fastflow.objectives import build_objective
from fastflow.objectives.rf import RectifiedFlow
from fastflow.train import load_config, train
from fastflow.train.ema import EMA, ema_decay
from fastflow.train.loop import lr_at
from fastflow.train.state import latest_checkpoint, list_checkpoints


def test_rf_objective_formula() -> None:
    x1 = torch.randn(4, 1, 4, 4)
    calls = {}

    def model(x, t, cond):
        calls.update(x=x, t=t, cond=cond)
        return torch.full_like(x, 0.5)

    obj = RectifiedFlow(time=TimeSampler("uniform", eps=1e-3))
    torch.manual_seed(7)
    loss, logs = obj(model, Batch(x1, torch.arange(4)), step=0)
    torch.manual_seed(7)
    z = torch.randn_like(x1)
    t = torch.rand(4) * (1 - 1e-3) + 1e-3
    xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * z
    assert torch.allclose(calls["x"], xt) and torch.allclose(calls["t"], t) and calls["cond"] is None
    assert torch.allclose(loss, ((0.5 - (x1 - z)) ** 2).mean())
    assert float(logs["loss"]) == float(loss)


def test_rf_objective_passes_and_drops_labels() -> None:
    seen = []
    obj = build_objective({"name": "rf", "cond_drop": 0.5}, num_classes=10)
    obj(
        lambda x, t, c: seen.append(c) or torch.zeros_like(x),
        Batch(torch.randn(400, 2), torch.zeros(400, dtype=torch.long)),
        0,
    )
    frac_null = float((seen[0] == 10).float().mean())
    assert 0.4 < frac_null < 0.6 and set(seen[0].tolist()) == {0, 10}


def test_ema_and_warmup_formulas() -> None:
    assert ema_decay(0.999999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999999, 90) == pytest.approx(91 / 100)
    assert ema_decay(0.9, 10**6) == 0.9
    m = torch.nn.Linear(2, 2)
    ema = EMA(m, 0.999)
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    d = ema.update(m, n=0)
    for e, b, p in zip(ema.model.parameters(), before, m.parameters(), strict=True):
        assert torch.allclose(e, d * b + (1 - d) * p)
    cfg = load_config(None, ["optim.lr=1e-3", "optim.warmup=10"])
    assert lr_at(cfg, 0) == pytest.approx(1e-4) and lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 500) == pytest.approx(1e-3)


def test_loss_decreases_and_artifacts(tmp_path) -> None:
    run = train(tiny_config(tmp_path / "run", "train.steps=60", "train.ckpt_every=30",
                            "train.sample_every=30", "optim.lr=3e-3", "train.tensorboard=true"))
    log = read_log(run)
    assert [r["step"] for r in log] == list(range(1, 61))
    first = sum(r["loss"] for r in log[:10]) / 10
    last = sum(r["loss"] for r in log[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert {"loss", "lr", "grad_norm", "ema_decay", "samples_per_s", "cpu_s_per_step"} <= set(log[0])
    assert (run / "samples" / "step-00000030.png").is_file() and (run / "config.yaml").is_file()
    assert [p.name for p in list_checkpoints(run)] == ["step-00000030", "step-00000060"]
    assert load_model(latest_checkpoint(run)).config.channels == 8


def test_refuses_to_overwrite_a_run(tmp_path) -> None:
    from fastflow.errors import ConfigError

    train(tiny_config(tmp_path, "train.steps=2"))
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(tmp_path, "train.steps=4"))


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    ck = latest_checkpoint(run)
    return {"model": load_file(ck / "model.safetensors"), "ema": load_file(ck / "ema.safetensors"),
            "state": torch.load(ck / "state.pt", weights_only=True)}


def _assert_identical(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    for pid, st in a["state"]["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["state"]["optimizer"]["state"][pid][k]), f"optimizer {pid}.{k}"
    assert set(a["state"]) == {"step", "optimizer"}  # no RNG state: the noise is a function of (seed, step)


def test_resume_is_bit_exact(tmp_path) -> None:
    n = 6
    straight = train(tiny_config(tmp_path / "a", f"train.steps={2 * n}", f"train.ckpt_every={n}"))
    train(tiny_config(tmp_path / "b", f"train.steps={n}", f"train.ckpt_every={n}"))
    resumed = train(tiny_config(tmp_path / "b", f"train.steps={2 * n}", f"train.ckpt_every={n}"),
                    resume=True)
    _assert_identical(_weights(straight), _weights(resumed))
    assert [r["step"] for r in read_log(resumed)] == list(range(1, 2 * n + 1))
    assert [r["loss"] for r in read_log(resumed)] == [r["loss"] for r in read_log(straight)]


def test_sigkill_then_resume(tmp_path) -> None:
    """Kill -9 a training run mid-way; resuming continues the log from the last checkpoint,
    leaves no corrupted files, and ends bit-identical to an uninterrupted run."""
    steps = 30
    extra = [f"train.steps={steps}", "train.ckpt_every=4", "train.keep_ckpts=2"]
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "fastflow", "train", "configs/digits.yaml", *TINY_DIGITS,
            f"out_dir={run}", *extra, "--threads", str(torch.get_num_threads())]  # same sums as in-process
    proc = subprocess.Popen(args, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        ck = latest_checkpoint(run)
        if ck is not None and int(ck.name.split("-")[1]) >= 8:
            break
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed: {proc.stderr.read()}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(r["step"] for r in read_log(run))
    assert killed_at < steps, "run finished before the kill"

    res = subprocess.run(args + ["--resume"], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "taking over the lock of an earlier run" in res.stderr  # the killed run's lock was stale
    log = read_log(run)
    assert [r["step"] for r in log] == list(range(1, steps + 1))  # no gap, no duplicate
    assert not list((run / "checkpoints").glob(".*.tmp"))
    for ck in list_checkpoints(run):
        load_model(ck)  # every checkpoint left on disk is complete and loadable
    straight = train(
        load_config(ROOT / "configs/digits.yaml", [*TINY_DIGITS, f"out_dir={tmp_path / 'straight'}", *extra])
    )
    _assert_identical(_weights(straight), _weights(run))


def test_bf16_autocast_step(tmp_path) -> None:
    run = train(tiny_config(tmp_path, "train.steps=3", "train.amp=bf16"))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in read_log(run))


DDP_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/tests")
from helpers import tiny_config
from fastflow.train import train
from fastflow.utils.distributed import shutdown_distributed
steps, resume = int(sys.argv[3]), sys.argv[4] == "1"
model_box = {}
import fastflow.train.parallel as parallel
orig = parallel.build_model
parallel.build_model = lambda spec: model_box.setdefault("m", orig(spec))
extra = [o for o in sys.argv[5].split("|") if o]
train(tiny_config(sys.argv[2], f"train.steps={steps}", "train.ckpt_every=2", *extra), resume=resume)
vec = torch.cat([p.detach().flatten() for p in model_box["m"].parameters()])
out = [torch.empty_like(vec) for _ in range(dist.get_world_size())]
dist.all_gather(out, vec)
assert all(torch.equal(out[0], o) for o in out), "ranks diverged"
print(f"rank {dist.get_rank()} ok {float(vec.abs().sum()):.6f}")
shutdown_distributed()  # gloo's threads are joined now, not left to race interpreter exit
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
assert not [t for t in threads if "gloo" in t], threads
"""


@pytest.mark.parametrize(
    "extra",
    [("train.grad_accum=2",), ("objective={name: meanflow}", "model.times=2", "model.t_scale=1")],
    ids=["rf-accum2", "meanflow-jvp"],
)
def test_ddp_two_cpu_ranks(tmp_path, extra) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    run = tmp_path / "run"
    for steps, resume in ((4, "0"), (6, "1")):
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                              "--standalone", str(script), str(ROOT), str(run), str(steps), resume, "|".join(extra)],
                             capture_output=True, text=True, env=cli_env(), timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.count("ok") == 2
    log = read_log(run)
    assert [r["step"] for r in log] == list(range(1, 7))  # rank 0 logs once per step
    assert latest_checkpoint(run).name == "step-00000006"


@pytest.mark.slow  # a method-quality claim trained for ~55 s
def test_toy2d_config_learns_the_mixture(tmp_path) -> None:
    """`fastflow train configs/toy2d.yaml` → samples far closer to the data than untrained."""
    cfg = load_config(ROOT / "configs" / "toy2d.yaml",
                      [f"out_dir={tmp_path}", "train.progress=false", "train.tensorboard=false"])
    run = train(cfg)
    from fastflow.data import build_dataset

    data = build_dataset(cfg.data).get(torch.arange(2000)).x
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    trained = load_model(latest_checkpoint(run))
    torch.manual_seed(cfg.seed)
    untrained = build_model(cfg.model).eval()
    x_tr = generate(trained, z, "euler", 100).x
    x_un = generate(untrained, z, "euler", 100).x
    mmd_tr, mmd_un = mmd_rbf(x_tr, data), mmd_rbf(x_un, data)
    sw_tr, sw_un = sliced_wasserstein(x_tr, data), sliced_wasserstein(x_un, data)
    assert mmd_tr < 0.1 * mmd_un and sw_tr < 0.25 * sw_un, (mmd_tr, mmd_un, sw_tr, sw_un)
    # the rk45 teacher solve agrees with fine Euler
    x_rk = generate(trained, z, "rk45").x
    assert mmd_rbf(x_rk, data) < 0.1 * mmd_un


def test_diverging_loss_raises_typed_error(tmp_path) -> None:
    import numpy as np

    from fastflow.errors import TrainingError

    np.savez(tmp_path / "huge.npz", x=np.full((64, 2), 1e30, np.float32))
    cfg = load_config(None, ["model.preset=toy2d", "data.name=npz", f"data.path={tmp_path / 'huge.npz'}",
                             f"out_dir={tmp_path / 'run'}", "train.progress=false", "train.steps=2",
                             "train.batch_size=8", "train.tensorboard=false", "train.log_every=50"])
    with pytest.raises(TrainingError, match="non-finite loss"):
        train(cfg)
    assert latest_checkpoint(tmp_path / "run") is None  # diverged weights are never checkpointed
