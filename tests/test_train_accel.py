"""``train.compile``, ``train.amp`` on the CPU and the frozen networks' inference kernels
(:mod:`fastflow.train.accel`): a compiled run computes what the eager run does, resumes exactly, and
what cannot run is refused in one line."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from fastflow.errors import ConfigError
from fastflow.fused.cpu_block import CpuResBlock
from fastflow.fused.frozen import apply_frozen
from fastflow.models.presets import build_model, random_inputs
from fastflow.pairs import FlowTeacher, generate_pairs
from fastflow.train import load_config, train
from fastflow.train.accel import autocast_for, cpu_bf16, resolve_amp
from tests.helpers import read_log, tiny_config

#: compiled against eager after 3 Adam steps: Inductor reorders float32 sums (measured ~1e-7 relative)
LOSS_RTOL = 1e-4
STEPS = ["train.steps=3", "train.log_every=1", "train.batch_size=8", "train.sample_every=0", "train.sample_n=4",
         "train.ckpt_every=3"]


def _losses(out, *extra: str) -> list[float]:
    train(tiny_config(out, *STEPS, *extra))
    return [r["loss"] for r in read_log(out)]


@pytest.mark.parametrize("mode", ["model", pytest.param("step", marks=pytest.mark.slow)])
def test_compiled_training_equals_eager(tmp_path, mode: str, monkeypatch) -> None:
    eager = _losses(tmp_path / "eager")
    calls: list[tuple[str, dict]] = []
    real = torch.compile

    def spy(fn, **kwargs):
        calls.append((type(fn).__name__, kwargs))
        return real(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    got = _losses(tmp_path / mode, f"train.compile={mode}")
    assert got == pytest.approx(eager, rel=LOSS_RTOL)
    # what was compiled: the network (model) or the objective's call (step), drawing eager's noise
    assert calls == [("UNet" if mode == "model" else "RectifiedFlow", {"options": {"fallback_random": True}})]
    assert read_log(tmp_path / mode)[-1]["compiled_graphs"] >= 1


def test_resume_of_a_compiled_run_is_exact(tmp_path) -> None:
    steps = ["train.batch_size=8", "train.sample_every=0", "train.sample_n=4", "train.log_every=1",
             "train.compile=model"]
    train(tiny_config(tmp_path / "whole", *steps, "train.steps=4", "train.ckpt_every=4"))
    train(tiny_config(tmp_path / "cut", *steps, "train.steps=2", "train.ckpt_every=2"))
    train(tiny_config(tmp_path / "cut", *steps, "train.steps=4", "train.ckpt_every=2"), resume=True)
    whole, cut = read_log(tmp_path / "whole"), read_log(tmp_path / "cut")
    assert [r["loss"] for r in whole] == [r["loss"] for r in cut]
    from fastflow.models import load_model

    a, b = load_model(tmp_path / "whole"), load_model(tmp_path / "cut")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), k


def test_compiled_checkpoint_keys_are_the_eager_ones(tmp_path) -> None:
    _losses(tmp_path / "c", "train.compile=model")
    from fastflow.models import load_model

    keys = set(load_model(tmp_path / "c").state_dict())
    assert keys == set(build_model(tiny_config(tmp_path / "x").model).state_dict())
    assert not any("_orig_mod" in k for k in keys)


def test_meanflow_refuses_compile_in_one_line(tmp_path) -> None:
    with pytest.raises(ConfigError, match="MeanFlow's target is a forward-mode JVP") as e:
        tiny_config(tmp_path, "objective={name: meanflow}", "model.times=2", "train.compile=step")
    assert "\n" not in str(e.value)


def test_compile_with_fsdp2_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="train.parallel=fsdp2 is not supported"):
        tiny_config(tmp_path, "train.parallel=fsdp2", "train.compile=model")


def test_yaml_off_is_the_word_off(tmp_path) -> None:
    assert tiny_config(tmp_path, "train.compile=off").train.compile == "off"
    assert load_config(None, ["train.compile=model"]).train.compile == "model"


def test_bf16_is_refused_where_the_cpu_would_emulate_it(monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert cpu_bf16() == (False, "neither AVX512-BF16 nor AMX")
    with pytest.raises(ConfigError, match="PyTorch would emulate bf16"):
        resolve_amp("bf16", torch.device("cpu"))
    assert resolve_amp("auto", torch.device("cpu")) == "none"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16"
    assert isinstance(autocast_for("bf16", torch.device("cpu")), torch.autocast)


@pytest.mark.skipif(not cpu_bf16()[0], reason="this CPU has no native bf16")
def test_bf16_training_on_a_native_cpu_keeps_fp32_weights(tmp_path) -> None:
    eager = _losses(tmp_path / "fp32")
    got = _losses(tmp_path / "bf16", "train.amp=bf16")
    assert got != eager and got == pytest.approx(eager, rel=0.05)  # bf16 rounding, same loss curve
    from fastflow.models import load_model

    assert {p.dtype for p in load_model(tmp_path / "bf16").parameters()} == {torch.float32}


def test_sdpa_runs_in_float32_under_cpu_autocast() -> None:
    from fastflow.models.layers import SDPA

    q, k, v = (torch.randn(2, 1, 16, 8) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = SDPA()(q, k, v)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_frozen_network_gets_the_cpu_kernel_and_agrees(tmp_path) -> None:
    net = build_model({"preset": "tiny"})
    for p in net.parameters():
        p.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    eager = copy.deepcopy(net).eval()
    decision, err = apply_frozen(net, "cpu", "cpu")
    assert decision.path == "cpu" and err < 1e-5 and not net.training
    assert any(isinstance(m, CpuResBlock) for m in net.modules())
    x, t, cond = random_inputs(net, 5, torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, cond), eager(x, t, cond), rtol=1e-5, atol=1e-5)
        for m in (net, copy.deepcopy(net)):  # a bf16 run calls its teacher; the hooks survive a copy
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = m(x.bfloat16(), t, cond)
            assert out.dtype == torch.float32
            torch.testing.assert_close(out, eager(x.bfloat16().float(), t, cond), rtol=1e-5, atol=1e-5)
    off, err = apply_frozen(copy.deepcopy(eager), "off", "cpu")
    assert off.path == "off" and err == 0.0


def test_fgd_under_bf16_with_a_cpu_kernel_guide(tmp_path, capsys, monkeypatch) -> None:
    """FGD's guide runs the CPU kernel in float32 inside a bf16 step (it once met the kernel's dtype check)."""
    if not cpu_bf16()[0]:
        pytest.skip("this CPU has no native bf16")
    monkeypatch.setenv("FASTFLOW_CACHE", str(tmp_path))  # auto picks the CPU kernel for small models (inference)
    (tmp_path / "fused-winners.json").write_text(json.dumps({"format": "fastflow-fused-winners", "version": 1,
                                                             "entries": [{"device": "cpu", "size": "small",
                                                                          "path": "cpu"}]}))
    teacher = train(tiny_config(tmp_path / "teacher", *STEPS, "train.steps=1", "train.ckpt_every=1"))
    generate_pairs(FlowTeacher.from_checkpoint(teacher, solver="euler", steps=1), tmp_path / "pairs", n=16,
                   sample_shape=(1, 16, 16), shard_size=16, batch_size=16)
    train(tiny_config(tmp_path / "fgd", *STEPS, "data.name=pairs", f"data.root={tmp_path / 'pairs'}",
                      f"objective={{name: fgd, teacher: '{teacher}'}}", "train.amp=bf16"))
    assert "objective.teacher: cpu inference kernels, max |Δ| against eager" in capsys.readouterr().out
    assert all(math.isfinite(r["loss"]) for r in read_log(tmp_path / "fgd"))


@pytest.mark.parametrize("spec", [{"preset": "tiny", "num_classes": 3}, {"preset": "tiny", "cond_channels": 3}])
def test_random_inputs_fit_every_kind(spec) -> None:
    net = build_model(spec)
    x, t, cond = random_inputs(net, 4, torch.Generator().manual_seed(0))
    assert net(x, t, cond).shape == x.shape
