"""int8 export (``fastflow-export --quantize int8``): ONNX Runtime QDQ and torchao PT2E packages
run in ONNX Runtime, OpenVINO, Python and ``fastflow-run``, stay within a stated error of fp32,
quantize only layers with weights, and refuse what they cannot do in one line."""

from __future__ import annotations

import json
import subprocess
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch

from fastflow.export import Generator
from fastflow.models import build_model, load_model, save_model

from helpers import run_cli

#: the stated error of int8 against fp32 on these random-weight generators: relative RMS error
REL_RMS = 0.05


def _ckpt(path, **overrides):
    torch.manual_seed(0)
    m = build_model({"preset": "digits-small", **overrides})
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    save_model(path, m, m)
    return path


def _export(ckpt, *args):
    return run_cli("-m", "fastflow.cli.export", str(ckpt), *args, "--threads", "1", timeout=900)


def _rel_rms(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _ckpt(tmp_path_factory.mktemp("int8"))


def test_int8_onnx_runs_in_onnxruntime_and_openvino_close_to_fp32(tmp_path, ckpt) -> None:
    import onnx

    from fastflow.export.formats import load_onnx, load_openvino

    out, report = tmp_path / "g.onnx", tmp_path / "report.json"
    res = _export(ckpt, "--format", "onnx", "--quantize", "int8", "--calibrate", "32", "-o", str(out),
                  "--report", str(report))
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(report.read_text())
    q = rep["int8"]
    assert q["samples"] == 1000 and q["max_abs_err"] > 0 and q["psnr_db"] > 30
    assert {"fd_fp32", "fd_int8", "coverage_fp32", "coverage_int8"} <= set(q)  # a 16×16 digit generator
    assert q["fd_rel_change"] == pytest.approx(q["fd_int8"] / q["fd_fp32"] - 1)
    assert rep["spec"]["extra"]["quantize"] == "int8" and rep["spec"]["extra"]["calibration_samples"] == "32"
    assert "int8 vs fp32 on 1000 samples" in res.stdout
    # Only convolutions and weight MatMuls are quantized: attention's two products take float inputs,
    # no Gemm (time embedding) reads a dequantized weight, GroupNorm statistics and softmax run in float.
    graph = onnx.load(str(out)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    weights = {t.name for t in graph.initializer}
    made_by = {o: n for n in graph.node for o in n.output}
    dq = lambda i: i in made_by and made_by[i].op_type == "DequantizeLinear"  # noqa: E731
    const = lambda i: i in weights or (dq(i) and made_by[i].input[0] in weights)  # noqa: E731
    for n in graph.node:
        if n.op_type == "MatMul" and not any(const(i) for i in n.input):  # attention's two products
            assert not any(dq(i) for i in n.input)
        if n.op_type == "Gemm":
            assert not dq(n.input[1])
    assert any(n.op_type == "Conv" and dq(n.input[1]) for n in graph.node)
    gen = Generator(load_model(ckpt), 1).eval()
    z = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = gen(z)
    for load in (load_onnx, load_openvino):
        got = load(out, torch.device("cpu"))(z)
        assert got.shape == ref.shape and _rel_rms(got, ref) < REL_RMS


@pytest.mark.slow  # ~65 s: two AOTInductor compiles; the int8 ONNX test stays in make test
def test_int8_pt2_runs_in_python_and_the_runner_close_to_fp32(tmp_path) -> None:
    from fastflow.bench.latency import RUNNER_BUILD_PATH
    from fastflow.export.formats import load_pt2, read_pt2_spec

    ckpt = _ckpt(tmp_path / "small", ch_mult=(1,), attn_resolutions=(16,))  # one level: a shorter compile
    out = tmp_path / "g.pt2"
    res = _export(ckpt, "--format", "pt2", "--quantize", "int8", "--calibrate", "16", "--batch", "2", "-o", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_pt2_spec(out).extra["quantize"] == "int8"
    with zipfile.ZipFile(out) as zf:  # oneDNN's int8 convolutions, not fake quantization in fp32
        code = "".join(zf.read(n).decode(errors="replace") for n in zf.namelist() if n.endswith("wrapper.cpp"))
    assert "qconv" in code
    z = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = Generator(load_model(ckpt), 1).eval()(z)
    got = load_pt2(out, torch.device("cpu"))(z)
    assert _rel_rms(got, ref) < REL_RMS
    if not RUNNER_BUILD_PATH.is_file():
        pytest.skip("fastflow-run is not built (make native)")
    np.save(tmp_path / "z.npy", z.numpy())
    run = subprocess.run([str(RUNNER_BUILD_PATH), str(out), "--input", str(tmp_path / "z.npy"), "--out",
                          str(tmp_path / "x.npy"), "--threads", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "x.npy")), got)


@pytest.mark.parametrize("args, match", [
    (["--format", "ep", "--quantize", "int8"], "applies to --format onnx or pt2"),
    (["--format", "onnx", "--quantize", "int8", "--dtype", "fp16"], "drop --dtype fp16"),
    (["--format", "onnx", "--calibrate", "8"], "add --quantize int8"),
    (["--format", "onnx", "--quantize", "int4"], "invalid choice"),
])
def test_quantize_refuses_in_one_line(tmp_path, ckpt, args, match) -> None:
    res = _export(ckpt, *args, "-o", str(tmp_path / "x.onnx"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and match in res.stderr, res.stderr


def test_int8_quality_formula_and_nan_refusal() -> None:
    """PSNR of int8 against fp32 on [−1, 1] images (peak-to-peak 2), the metric's relative change, and a
    NaN output refused as an artefact error."""
    import math

    from fastflow.errors import ArtifactError
    from fastflow.export.spec import BatchRange, GeneratorSpec
    from fastflow.export.validate import int8_quality

    spec = GeneratorSpec("generator", (1, 2, 2), BatchRange(2, 2, 2))
    inputs = lambda b: (torch.zeros(b, 1, 2, 2),)  # noqa: E731
    q = int8_quality(lambda z: z, lambda z: z + 0.1, spec, inputs, samples=4,
                     scores=lambda x: {"fd": 1.0 + float(x.mean()), "coverage": 1.0})
    assert q["samples"] == 4 and q["max_abs_err"] == pytest.approx(0.1) and q["mean_abs_err"] == pytest.approx(0.1)
    assert q["psnr_db"] == pytest.approx(10 * math.log10(4 / 0.01))
    assert q["fd_fp32"] == 1.0 and q["fd_rel_change"] == pytest.approx(0.1)
    with pytest.raises(ArtifactError, match="NaN"):
        int8_quality(lambda z: z, lambda z: z * float("nan"), spec, inputs, samples=2)
