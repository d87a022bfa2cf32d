"""FSDP2, activation checkpointing and gradient accumulation on CPU ranks (gloo): every path against
its single-process result, sharded checkpoints resumed across world sizes (their format and
damage: ``test_dcp.py``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

import fastflow.train.loop as loop
from fastflow.cli.main import main
from fastflow.data import Batch, build_dataset
from fastflow.errors import ConfigError
from fastflow.models.checkpoint import load_model
from fastflow.models.presets import build_model
from fastflow.train import train
from fastflow.train.parallel import build, checkpoint_activations, fsdp_kwargs
from fastflow.train.state import latest_checkpoint
from fastflow.train.step import MicroBatches, train_step
from fastflow.utils.distributed import DistInfo
from tests.helpers import FSDP, ROOT, cli_env, read_log, tiny_config

# Run as each of two ranks (torchrun's environment): `fastflow train …`, dumping every rank-0 full
# state (model, EMA, Adam) after each checkpoint save and after a resume's load (DUMP.stepN, DUMP.loaded).
WORKER = r"""
import sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/tests")
from test_fsdp import spy
from fastflow.cli.main import main
spy(sys.argv[2])
sys.exit(main(sys.argv[3:]))
"""


def full_states(model, ema, opt) -> dict[str, torch.Tensor]:
    """Whole model/EMA/Adam tensors (a collective under FSDP2; every rank gets them)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    o = StateDictOptions(full_state_dict=True)
    out = {f"model.{k}": v for k, v in get_model_state_dict(model, options=o).items()}
    out |= {f"ema.{k}": v for k, v in get_model_state_dict(ema.model, options=o).items()}
    for fqn, st in get_optimizer_state_dict(model, opt, options=o)["state"].items():
        out |= {f"optim.{fqn}.{k}": v for k, v in st.items()}
    return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}


_DUMP: list[str] = [""]


def spy(dump: str, patch=None) -> None:
    """From now on dump full states to ``dump.step-N`` at every save and ``dump.loaded`` after a
    resume's load (rank 0 writes); a later call only changes the prefix."""
    _DUMP[0] = dump
    if getattr(loop._save, "spy", False):
        return
    setattr_ = patch.setattr if patch is not None else (lambda o, n, v: setattr(o, n, v))
    orig_save, orig_resume = loop._save, loop._resume

    def write(name: str, info, model, ema, opt) -> None:
        states = full_states(model, ema, opt)
        if info.main:
            save_file(states, f"{_DUMP[0]}.{name}")

    def save(cfg, info, run, n, model, ema, opt, meta):
        orig_save(cfg, info, run, n, model, ema, opt, meta)
        write(f"step{n}", info, model, ema, opt)

    def resume(cfg, info, ckpt, model, ema, opt, objective):
        step = orig_resume(cfg, info, ckpt, model, ema, opt, objective)
        write("loaded", info, model, ema, opt)
        return step

    save.spy = True
    setattr_(loop, "_save", save)
    setattr_(loop, "_resume", resume)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp: Path, dump: Path, *args: str) -> list[subprocess.Popen]:
    """Two ranks of ``fastflow ARGS`` with torchrun's environment (started directly: no agent to
    import torch first), each dumping its full states under ``dump``."""
    script = tmp / "worker.py"
    script.write_text(WORKER)
    env = {**cli_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2"}
    return [subprocess.Popen([sys.executable, str(script), str(ROOT), str(dump), *args], cwd=tmp,
                             env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for r in range(2)]


def two_ranks(tmp: Path, dump: Path, *args: str) -> None:
    """Run two ranks to the end; both must succeed."""
    procs = launch(tmp, dump, *args)
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]


def tiny_args(run: Path, *extra: str) -> list[str]:
    from tests.helpers import TINY_DIGITS

    return ["train", "configs/digits.yaml", *TINY_DIGITS, f"out_dir={run}", *FSDP, *extra]


def assert_close(a: dict, b: dict, atol: float, parts=("model", "ema", "optim")) -> float:
    keys = [k for k in a if k.split(".")[0] in parts]
    assert keys and set(keys) <= set(b)
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)
    assert worst <= atol, worst
    return worst


def test_fsdp2_diffusers_unet_two_ranks_equal_one_process(tmp_path, monkeypatch) -> None:
    """A diffusers UNet2DConditionModel student (InstaFlow's 2-RF on teacher pairs), sharded per
    down/mid/up block and transformer block: two ranks = one process × two micro-batches with its
    blocks recomputed (activation checkpointing)."""
    from tests.helpers import tiny_sd_folder

    sd = tiny_sd_folder(tmp_path / "sd")
    (tmp_path / "prompts.txt").write_text("a cat\na red dog\n")
    table, pairs = tmp_path / "prompts.safetensors", tmp_path / "pairs"
    assert main(["prompts", str(sd), str(tmp_path / "prompts.txt"), "--out", str(table)]) == 0
    assert main(["pairs", "--sd", str(sd), "--prompts", str(table), "--solver", "euler", "--steps", "2",
                 "--count", "8", "--out", str(pairs), "--quiet"]) == 0
    config = tmp_path / "2rf.yaml"
    config.write_text(f"model: {{arch: sd, path: '{sd}', prediction: velocity, prompts: '{table}'}}\n"
                      f"data: {{name: pairs, root: '{pairs}'}}\nobjective: {{name: reflow, cond_drop: 0.5}}\n")
    common = [*FSDP, "train.steps=2", "train.batch_size=4", "train.progress=false", "train.tensorboard=false",
              "optim.lr=1e-4", "train.ema_rate=0.9"]
    two_ranks(tmp_path, tmp_path / "two", "train", str(config), f"out_dir={tmp_path / 'two-run'}", *common)
    spy(str(tmp_path / "one"), monkeypatch)
    assert main(["train", str(config), f"out_dir={tmp_path / 'one-run'}", *common, "train.grad_accum=2",
                 "train.activation_checkpointing=blocks"]) == 0  # recomputing the diffusers blocks: same gradients
    worst = assert_close(load_file(tmp_path / "two.step2"), load_file(tmp_path / "one.step2"), atol=1e-6)
    print(f"diffusers UNet: max |Δ| after 2 steps {worst:.2e}")


def test_kill_a_rank_then_resume_is_bit_exact(tmp_path) -> None:
    """kill -9 of one FSDP2 rank mid-run; --resume on 2 ranks ends bit-identical to an uninterrupted run."""
    steps = ["train.steps=6"]
    procs = launch(tmp_path, tmp_path / "k", *tiny_args(tmp_path / "killed", *steps))
    deadline = time.time() + 180
    while time.time() < deadline:
        ck = latest_checkpoint(tmp_path / "killed") if (tmp_path / "killed" / "checkpoints").is_dir() else None
        if ck is not None:
            break
        assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-2000:]
        time.sleep(0.02)
    os.kill(procs[1].pid, signal.SIGKILL)  # rank 1 dies; rank 0 then waits in a collective…
    time.sleep(0.5)
    os.kill(procs[0].pid, signal.SIGKILL)  # …until the job is torn down, as torchrun or a scheduler does
    for p in procs:
        p.wait()
    done = int(latest_checkpoint(tmp_path / "killed").name.split("-")[1])
    assert done < 6, "run finished before the kill"
    two_ranks(tmp_path, tmp_path / "r", *tiny_args(tmp_path / "killed", *steps), "--resume")
    two_ranks(tmp_path, tmp_path / "s", *tiny_args(tmp_path / "straight", *steps))
    a, b = load_file(tmp_path / "r.step6"), load_file(tmp_path / "s.step6")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "killed" / "checkpoints").glob(".*.tmp"))


def test_two_ranks_equal_one_process_and_resume_across_world_sizes(tmp_path, monkeypatch) -> None:
    """Two FSDP2 ranks × one micro-batch = one process × two (same micro-batches and noise): losses,
    weights, EMA and Adam's moments within fp32 round-off after each step. Resuming 2 ranks → 1 process
    and 1 → 2: the loaded states equal the saved ones exactly and the next steps match the
    uninterrupted run within fp32 round-off (the reduction order differs)."""
    two_ranks(tmp_path, tmp_path / "a", *tiny_args(tmp_path / "a-run", "train.steps=4"))
    spy(str(tmp_path / "c"), monkeypatch)
    c_run = tmp_path / "c-run"
    train(tiny_config(c_run, *FSDP, "train.steps=4", "train.grad_accum=2"))  # one process, to step 4
    same = [assert_close(load_file(tmp_path / f"a.step{n}"), load_file(tmp_path / f"c.step{n}"), atol=1e-6)
            for n in (2, 4)]
    la, lc = [r["loss"] for r in read_log(tmp_path / "a-run")], [r["loss"] for r in read_log(c_run)]
    assert la == pytest.approx(lc, rel=1e-6, abs=1e-7)

    b_run = tmp_path / "b-run"
    shutil.copytree(tmp_path / "a-run", b_run)
    shutil.rmtree(b_run / "checkpoints" / "step-00000004")
    (b_run / "checkpoints" / "latest").write_text("step-00000002\n")
    spy(str(tmp_path / "b"), monkeypatch)
    train(tiny_config(b_run, *FSDP, "train.steps=4", "train.grad_accum=2"), resume=True)
    saved, loaded = load_file(tmp_path / "a.step2"), load_file(tmp_path / "b.loaded")
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)  # 2 → 1: exact
    worst21 = assert_close(load_file(tmp_path / "a.step4"), load_file(tmp_path / "b.step4"), atol=1e-6)

    d_run = tmp_path / "d-run"
    shutil.copytree(c_run, d_run)
    shutil.rmtree(d_run / "checkpoints" / "step-00000004")
    (d_run / "checkpoints" / "latest").write_text("step-00000002\n")
    two_ranks(tmp_path, tmp_path / "d", *tiny_args(d_run, "train.steps=4"), "--resume")
    saved, loaded = load_file(tmp_path / "c.step2"), load_file(tmp_path / "d.loaded")
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)  # 1 → 2: exact
    worst12 = assert_close(load_file(tmp_path / "c.step4"), load_file(tmp_path / "d.step4"), atol=1e-6)
    print(f"2 ranks vs 1 process max |Δ| {max(same):.2e}; resumed 2→1 {worst21:.2e}, 1→2 {worst12:.2e}")


# -- in one process ----------------------------------------------------------------------------

@pytest.fixture
def group_of_one():
    """A gloo process group of one rank (what `train.parallel=fsdp2` makes for a single process)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield DistInfo()
    dist.destroy_process_group()


@pytest.mark.parametrize("preset", ["tiny", "toy2d"])
def test_sharded_build_equals_whole_build(preset, group_of_one) -> None:
    """Built unit by unit on the meta device and sharded = built whole: every weight identical, and
    every parameter initialised (none left as the uninitialised memory of ``to_empty``)."""
    whole = build({"preset": preset}, "off", group_of_one, seed=7)
    sharded = build({"preset": preset}, "off", group_of_one, seed=7, shard=fsdp_kwargs(group_of_one, "fp32", False))
    ws, ss = whole.state_dict(), sharded.state_dict()
    assert ws.keys() == ss.keys()
    for k in ws:
        assert torch.equal(ws[k], ss[k].full_tensor()), k
    other = build({"preset": preset}, "off", group_of_one, seed=8).state_dict()
    assert any(not torch.equal(ws[k], other[k]) for k in ws)  # the seed reaches the weights
    from fastflow.models.init import init_weights

    with torch.device("meta"):
        m = build_model({"preset": preset})
    m.to_empty(device="cpu")
    for p in m.parameters():
        p.data.fill_(float("nan"))
    init_weights(m, 7)
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ws.values(), strict=True))


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    from fastflow.objectives import build_objective

    info = DistInfo()
    objective = build_objective({"name": "rf"}, num_classes=0, device=torch.device("cpu"))
    batch = Batch(torch.randn(4, 3, 8, 8))
    grads = []
    for ac in (False, True):
        model = build({"preset": "tiny"}, "off", info, seed=1)
        torch.manual_seed(0)
        torch.nn.init.normal_(model.conv_out.weight, std=0.1)  # a non-zero output layer: every gradient flows
        if ac:
            assert checkpoint_activations(model) == len(model.down) + len(model.mid) + len(model.up)
        torch.manual_seed(3)
        loss, _ = objective(model, batch, 0)
        loss.backward()
        grads.append(_grads(model))
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    with pytest.raises(ConfigError, match="no blocks"):
        checkpoint_activations(build({"preset": "toy2d"}, "off", info, seed=1))


def test_gradient_accumulation_equals_one_batch() -> None:
    """Two micro-batches of B/2 = one batch of B (a noise-free loss: only the arithmetic differs)."""
    info = DistInfo()
    data = build_dataset({"name": "toy2d", "n": 256})

    def objective(net, batch, step):
        t = batch.x[:, 0].sigmoid()
        loss = (net(batch.x, t) - batch.x.flip(1)).square().mean()
        return loss, {"loss": loss.detach()}

    grads = []
    for accum in (1, 2):
        model = build({"preset": "toy2d"}, "off", info, seed=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        micro = MicroBatches.build(data, 16, accum, 0, info)
        logs = train_step(model, model, objective, micro, 5, info.device, torch.autocast("cpu", enabled=False),
                          opt, clip=float("inf"))
        grads.append((_grads(model), float(logs["loss"])))
    (ga, la), (gb, lb) = grads
    assert la == pytest.approx(lb, rel=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(ga, gb, strict=True))


def test_micro_batches_are_the_same_over_world_sizes() -> None:
    """1 rank × 4 micro-batches, 2 × 2 and 4 × 1 run the same micro-batches with the same seeds."""
    data = build_dataset({"name": "toy2d", "n": 100})

    def layout(world: int) -> list[tuple[list[int], int]]:
        out = []
        for rank in range(world):
            m = MicroBatches.build(data, 8, 4 // world, 3, DistInfo(rank=rank, world=world))
            out += [(s.indices(7).tolist(), m.seed_of(7, a)) for a, s in enumerate(m.streams)]
        return out

    assert layout(1) == layout(2) == layout(4)
    with pytest.raises(ConfigError, match="not divisible"):
        MicroBatches.build(data, 6, 4, 0, DistInfo())


def test_fsdp2_with_checkpointing_accumulation_and_init_from(tmp_path) -> None:
    """The options together on one process: activation checkpointing + accumulation train, and a
    sharded run starts from a single-file checkpoint's weights."""
    base = train(tiny_config(tmp_path / "base", "train.steps=2"))
    run = train(tiny_config(tmp_path / "run", *FSDP, "train.steps=2", "train.grad_accum=2", "optim.lr=1e-9",
                            "train.activation_checkpointing=blocks", f"train.init_from={base}"))
    assert [r["step"] for r in read_log(run)] == [1, 2]
    assert main(["checkpoint", "consolidate", str(run)]) == 0
    start, now = load_model(base).state_dict(), load_model(run, weights="model").state_dict()
    assert max(float((start[k] - now[k]).abs().max()) for k in start) < 1e-6  # began from base's EMA weights


def test_meanflow_under_fsdp2_equals_one_process(tmp_path) -> None:
    """MeanFlow's JVP target under FSDP2 (a no-grad JVP pass, then the prediction) = the joint
    forward-mode pass of an unsharded model; and the options train together (bf16, accumulation)."""
    mf = ["objective={name: meanflow}", "model.times=2", "model.t_scale=1", "train.steps=2", "model.dropout=0.1"]
    sharded = load_model(train(tiny_config(tmp_path / "fsdp", *FSDP, *mf)), weights="model")
    plain = load_model(train(tiny_config(tmp_path / "plain", *mf, "train.ckpt_every=2")), weights="model")
    # The two routes to the target (a no-grad JVP pass, then the prediction; or one joint pass) round
    # differently: after two Adam steps of lr 1e-3 they part by ~1e-6 (1.3e-6 on an AMD EPYC, < 1e-6 on
    # an Intel Xeon); a wrong target or gradient moves weights by ~lr.
    tol = 1e-5
    worst = max(
        float((a - b).abs().max())
        for a, b in zip(sharded.state_dict().values(), plain.state_dict().values(), strict=True)
    )
    assert worst <= tol, worst
    checkpointed = load_model(train(tiny_config(tmp_path / "ac", *mf, "train.ckpt_every=2",
                                                "train.activation_checkpointing=blocks")), weights="model")
    worst = max(float((a - b).abs().max()) for a, b in zip(checkpointed.state_dict().values(),
                                                            plain.state_dict().values(), strict=True))
    assert worst <= tol, worst
    run = train(tiny_config(tmp_path / "bf16", *FSDP, *mf, "train.precision=bf16", "train.grad_accum=2",
                            "train.activation_checkpointing=blocks"))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in read_log(run))
