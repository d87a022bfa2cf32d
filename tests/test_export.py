"""Export: the generator wrapper, ONNX (onnxruntime, dynamic batch), torch.export, AOTInductor,
validation exit codes, the report, and the TensorRT hint without a GPU."""

import json
import os

import pytest
import torch
from helpers import fill_disk, run_cli, small_tmpfs

from fastflow.export import Generator
from fastflow.export.validate import compare
from fastflow.flow import generate
from fastflow.models import build_model, save_model


def _random_model(**overrides) -> torch.nn.Module:
    """A digits-small UNet with small random weights everywhere (non-trivial outputs)."""
    torch.manual_seed(0)
    m = build_model({"preset": "digits-small", **overrides})
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    m = _random_model()
    save_model(d, m, m)
    return d


def _export(ckpt, *args):
    return run_cli("-m", "fastflow.cli.export", str(ckpt), *args, timeout=600)


def test_generator_matches_euler_solver() -> None:
    m = build_model({"preset": "tiny"}).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    z = torch.randn(3, 3, 8, 8)
    for k in (1, 3):
        with torch.no_grad():
            assert torch.allclose(Generator(m, k)(z), generate(m, z, "euler", k).x, atol=1e-6)


def test_compare_counts_errors_and_nonfinite() -> None:
    ref = lambda z: z  # noqa: E731
    assert compare(ref, lambda z: z + 1e-5, [torch.ones(2, 3)], atol=1e-4, rtol=0)["passed"]
    r = compare(ref, lambda z: z + 1e-3, [torch.ones(2, 3)], atol=1e-4, rtol=0)
    assert not r["passed"] and r["violations"] == 6 and r["max_abs_err"] == pytest.approx(1e-3, rel=1e-3)
    r = compare(ref, lambda z: z * float("nan"), [torch.ones(2, 3)], atol=1, rtol=1)
    assert not r["passed"] and r["nan_inf_count"] == 6


@pytest.mark.slow  # ~55 s; the other ONNX exports validate at min/opt/max batch in make test
def test_onnx_dynamic_batch_validates_with_onnxruntime(tmp_path, ckpt) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out, rep = tmp_path / "g.onnx", tmp_path / "report.json"
    res = _export(ckpt, "--format", "onnx", "-o", str(out), "--min-batch", "1", "--max-batch", "8",
                  "--steps", "2", "--validate", "--report", str(rep))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "validation passed" in res.stdout
    r = json.loads(rep.read_text())
    for key in ("versions", "device", "settings", "build_seconds", "artifact_bytes", "validation",
                "latency_ms", "checkpoint", "format"):
        assert key in r, key
    assert {"p50_ms", "p90_ms", "p99_ms"} <= set(r["latency_ms"])
    assert r["settings"]["batch"] == {"min": 1, "opt": 8, "max": 8} and r["settings"]["opset"] == 19
    assert [b["batch"] for b in r["validation"]["per_batch"]] == [1, 8]
    assert r["validation"]["max_abs_err"] < 1e-4 and r["artifact_bytes"] == out.stat().st_size
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out))
    for b in (1, 3, 8):  # any batch in the range runs
        z = torch.randn(b, 1, 16, 16)
        assert sess.run(None, {"z": z.numpy()})[0].shape == (b, 1, 16, 16)
    # an impossibly tight tolerance fails validation with exit code 1
    res = _export(ckpt, "--format", "onnx", "-o", str(tmp_path / "t.onnx"), "--batch", "2",
                  "--validate", "--atol", "0", "--rtol", "0")
    assert res.returncode == 1 and "validation FAILED" in res.stdout


def test_onnx_fp16_keeps_softmax_in_fp32(tmp_path, ckpt) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    out = tmp_path / "h.onnx"
    res = _export(ckpt, "--format", "onnx", "-o", str(out), "--batch", "2", "--dtype", "fp16")
    assert res.returncode == 0, res.stderr[-3000:]
    g = onnx.load(str(out)).graph
    producers = {o: n for n in g.node for o in n.output}
    softmax = [n for n in g.node if n.op_type == "Softmax"]
    assert softmax
    for n in softmax:
        cast = producers[n.input[0]]
        assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT


def test_exported_program_and_pt2(tmp_path, ckpt, monkeypatch) -> None:
    from fastflow.errors import ArtifactError, DTypeError, ShapeError
    from fastflow.export.formats import load_pt2, read_pt2_spec
    from fastflow.models import load_model
    from fastflow.utils.io import file_digest

    res = _export(ckpt, "--format", "ep", "-o", str(tmp_path / "g.pt2"), "--batch", "2", "--validate")
    assert res.returncode == 0 and "validation passed" in res.stdout, res.stderr[-2000:]
    ckpt = tmp_path / "small"  # one UNet level: the AOTInductor compile takes ~20 s instead of ~50 s
    save_model(ckpt, m := _random_model(ch_mult=(1,), attn_resolutions=(16,)), m)
    out = tmp_path / "aoti.pt2"
    res = _export(ckpt, "--format", "pt2", "-o", str(out), "--min-batch", "1", "--max-batch", "4", "--validate")
    assert res.returncode == 0 and "validation passed" in res.stdout, res.stderr[-3000:]
    # The package describes its inputs (read without loading the model).
    spec = read_pt2_spec(out)
    assert (spec.kind, spec.inputs, spec.sample_shape, spec.dtype, spec.device) == (
        "generator", ("z",), (1, 16, 16), "fp32", "cpu")
    assert (spec.batch.min, spec.batch.max) == (1, 4) and spec.checkpoint_sha256 == file_digest(
        ckpt / "ema.safetensors"
    )
    monkeypatch.setenv("AOTI_RUNTIME_CHECK_INPUTS", "0")  # the loader switches AOTI's checks on regardless
    run = load_pt2(out, torch.device("cpu"))
    assert os.environ["AOTI_RUNTIME_CHECK_INPUTS"] == "1"
    with torch.no_grad():
        gen = Generator(load_model(ckpt), 1)
        for b in (1, 3, 4):  # batch 1 of a dynamic package works (lower bound not specialised to 2)
            z = torch.randn(b, 1, 16, 16)
            assert torch.allclose(run(z), gen(z), atol=1e-4)
        for z in (torch.randn(2, 1, 16, 16).transpose(2, 3), torch.randn(1, 1, 16, 16).expand(3, -1, -1, -1),
                  torch.randn(2, 1, 16, 16).to(memory_format=torch.channels_last), torch.randn(2, 1, 16, 32)[..., ::2]):
            assert torch.allclose(run(z), gen(z.contiguous()), atol=1e-4)  # strided views are read as values
    # Wrong inputs are a typed error before they reach the compiled code (which would read out of bounds).
    for bad in (torch.randn(5, 1, 16, 16), torch.randn(2, 1, 8, 8), torch.randn(2, 16, 16),
                torch.randn(2, 1, 16, 16, dtype=torch.float64)):
        with pytest.raises(ShapeError):
            run(bad)
    with pytest.raises(ShapeError):
        run(torch.randn(2, 1, 16, 16), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DTypeError, match="dense"):  # a sparse tensor has no strides to check
        run(torch.randn(2, 1, 16, 16).to_sparse())
    with pytest.raises(ArtifactError, match="compiled for cpu"):
        load_pt2(out, torch.device("cuda"))
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(out.read_bytes()[:1000])
    with pytest.raises(ArtifactError):
        load_pt2(truncated, torch.device("cpu"))


def test_generator_spec_round_trips_and_rejects_malformed_metadata() -> None:
    from fastflow.errors import ArtifactError, ShapeError
    from fastflow.export.spec import BatchRange, GeneratorSpec

    spec = GeneratorSpec("conditional", (1, 16, 16), BatchRange(1, 2, 8), "fp16", steps=2, num_classes=10,
                         checkpoint_sha256="ab", fused="op", prepack=True, quantize="int8",
                         calibration_samples=16, cfg_scale=2.5)
    meta = spec.to_metadata()
    assert all(isinstance(v, str) for v in meta.values()) and meta["fastflow.inputs"] == "z,cond"
    assert GeneratorSpec.from_metadata(meta) == spec
    assert GeneratorSpec.from_metadata({"AOTI_DEVICE_KEY": "cpu"}) is None
    for broken in ({**meta, "fastflow.batch_min": "one"}, {k: v for k, v in meta.items() if k != "fastflow.dtype"},
                   {**meta, "fastflow.version": "99"}, {**meta, "fastflow.kind": "video"}):
        with pytest.raises(ArtifactError):
            GeneratorSpec.from_metadata(broken)
    z = torch.randn(2, 1, 16, 16, dtype=torch.float16)
    spec.check(z, torch.tensor([0, 9]))
    with pytest.raises(ShapeError, match="labels"):
        spec.check(z, torch.tensor([0, 10]))
    with pytest.raises(ShapeError, match="dtype"):
        spec.check(z, torch.tensor([0, 1], dtype=torch.int32))


def test_prepack_freezes_the_weights_into_the_package(tmp_path) -> None:
    """``--prepack``: a frozen package (oneDNN convolutions on prepacked weights, no per-call ATen
    convolution) that validates against PyTorch and says so in its spec and report; refused off pt2."""
    import zipfile

    from fastflow.export.formats import read_pt2_spec

    ckpt = tmp_path / "small"
    save_model(ckpt, m := _random_model(ch_mult=(1,), attn_resolutions=(16,)), m)
    out, report = tmp_path / "frozen.pt2", tmp_path / "r.json"
    res = _export(ckpt, "--format", "pt2", "--prepack", "--batch", "2", "-o", str(out), "--validate",
                  "--report", str(report))
    assert res.returncode == 0 and "validation passed" in res.stdout, res.stderr[-3000:]
    assert read_pt2_spec(out).prepack and json.loads(report.read_text())["settings"]["prepack"]
    with zipfile.ZipFile(out) as zf:
        code = "".join(zf.read(n).decode() for n in zf.namelist() if n.endswith(".cpp"))
    assert "mkldnn__convolution_pointwise" in code and "aoti_torch_cpu_convolution(" not in code
    res = _export(ckpt, "--format", "onnx", "--prepack", "-o", str(tmp_path / "x.onnx"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--format pt2" in res.stderr, res.stderr


@pytest.mark.parametrize("fmt", ["engine", "trt-pt2"])
def test_engine_without_tensorrt_exits_2_with_hint(tmp_path, ckpt, fmt) -> None:
    if torch.cuda.is_available():
        pytest.skip("has a GPU: the engine path is tested on the device")
    res = _export(ckpt, "--format", fmt, "-o", str(tmp_path / "g.engine"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "tensorrt" in res.stderr.lower() and "pip install" in res.stderr


@pytest.mark.parametrize("args", [["--min-batch", "4", "--max-batch", "2"], ["--opset", "11"], ["--steps", "0"]])
def test_export_bad_arguments_exit_2(tmp_path, ckpt, args) -> None:
    res = _export(ckpt, "--format", "onnx", "-o", str(tmp_path / "x.onnx"), *args)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr


def test_export_corrupted_checkpoint_exits_2(tmp_path) -> None:
    res = _export(tmp_path / "nothing", "--format", "onnx", "-o", str(tmp_path / "x.onnx"))
    assert res.returncode == 2 and "checkpoint" in res.stderr


def test_class_conditional_generator_exports_with_a_label_input(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    d = tmp_path / "cond"
    m = _random_model(num_classes=10)
    save_model(d, m, m)
    out, rep = tmp_path / "c.onnx", tmp_path / "r.json"
    res = _export(d, "--format", "onnx", "-o", str(out), "--max-batch", "4", "--validate", "--report", str(rep))
    assert res.returncode == 0 and "validation passed" in res.stdout, res.stderr[-3000:]
    assert json.loads(rep.read_text())["inputs"] == ["z", "cond"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out))
    z = torch.randn(2, 1, 16, 16)
    a = sess.run(None, {"z": z.numpy(), "cond": torch.tensor([1, 1]).numpy()})[0]
    b = sess.run(None, {"z": z.numpy(), "cond": torch.tensor([7, 7]).numpy()})[0]
    assert abs(a - b).max() > 1e-4  # the label changes the image


def test_oftsr_student_exports_with_tau_as_an_input(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from fastflow.export.generator import SRGenerator
    from fastflow.flow.sr import sr_one_step

    d = tmp_path / "oftsr"
    m = _random_model(cond_channels=1)
    save_model(d, m, m, meta={"objective_config": {"name": "oftsr", "sigma_p": 0.2}})
    lq, noise = torch.rand(2, 1, 16, 16) * 2 - 1, torch.randn(2, 1, 16, 16)
    with torch.no_grad():  # the wrapper is the one-step formula
        assert torch.allclose(SRGenerator(m.eval(), 0.2)(lq, noise, torch.full((2,), 0.3)),
                              sr_one_step(m, lq, 0.3, 0.2, noise), atol=1e-6)
    out, rep = tmp_path / "sr.onnx", tmp_path / "r.json"
    res = _export(d, "--format", "onnx", "-o", str(out), "--max-batch", "4", "--validate", "--report", str(rep))
    assert res.returncode == 0 and "validation passed" in res.stdout, res.stderr[-3000:]
    assert json.loads(rep.read_text())["inputs"] == ["lq", "noise", "tau"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out))
    feed = {"lq": lq.numpy(), "noise": noise.numpy()}
    a = sess.run(None, {**feed, "tau": torch.full((2,), 0.1).numpy()})[0]
    b = sess.run(None, {**feed, "tau": torch.full((2,), 0.9).numpy()})[0]
    with torch.no_grad():
        ta = SRGenerator(m, 0.2)(lq, noise, torch.full((2,), 0.1)).numpy()
        tb = SRGenerator(m, 0.2)(lq, noise, torch.full((2,), 0.9)).numpy()
    assert abs(a - ta).max() < 1e-5 and abs(b - tb).max() < 1e-5  # the knob is live and exact
    assert abs(a - b).max() > 1e-5
    save_model(tmp_path / "teacher", m, m, meta={"objective_config": {"name": "sr"}})
    res = _export(tmp_path / "teacher", "--format", "onnx", "-o", str(tmp_path / "t.onnx"))
    assert res.returncode == 2 and "OFTSR" in res.stderr


def test_export_over_an_existing_package_on_a_full_disk_keeps_it(tmp_path, ckpt, monkeypatch, capsys) -> None:
    """A full disk: one line, exit 2, the earlier package byte-identical, nothing partial beside it.
    The .pt2 compile is replaced by a 1 MB package (what is tested is fastflow's staging and copy:
    PyTorch's own zip writer aborts the process on ENOSPC, so it never writes to the target disk)."""
    from fastflow.cli import export as export_cli

    with small_tmpfs(tmp_path / "disk") as disk:
        old = {"g.pt2": b"old package", "g.onnx": b"old model"}
        for name, data in old.items():
            (disk / name).write_bytes(data)
        fill_disk(disk)

        def fake_package(ep, package_path, inductor_configs) -> None:  # noqa: ANN001
            with open(package_path, "wb") as f:
                f.write(bytes(1 << 20))

        monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fake_package)
        assert export_cli.main([str(ckpt), "--format", "pt2", "-o", str(disk / "g.pt2"), "--batch", "1",
                                "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"fastflow-export: error: {disk / 'g.pt2'}: No space left on device", err
        r = run_cli("-m", "fastflow.cli.export", str(ckpt), "--format", "onnx", "-o", str(disk / "g.onnx"),
                    "--batch", "1", "--device", "cpu")
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith("No space left on device"), r.stderr
        assert {p.name: p.read_bytes() for p in disk.iterdir() if p.name != "filler"} == old


@pytest.mark.parametrize("dim,batch,ok", [("B", (1, 2, 4), True), (4, (1, 2, 4), False), (2, (2, 2, 2), True),
                                          ("B", (2, 2, 2), False), (3, (2, 2, 2), False)])
def test_onnx_graph_batch_is_checked_against_the_contract(tmp_path, dim, batch, ok) -> None:
    """A graph whose batch a forward specialised (fixed where the range is dynamic, or another static
    batch) is refused before it is renamed into place."""
    from fastflow.errors import ArtifactError
    from fastflow.export.contract import check_onnx
    from fastflow.export.spec import BatchRange, GeneratorSpec

    _identity_graph(tmp_path / "g.onnx", "z", onnx_type=1, dims=[dim, 1, 4, 4])
    spec = GeneratorSpec("generator", (1, 4, 4), BatchRange(*batch))
    if ok:
        check_onnx(tmp_path / "g.onnx", spec, ["z"])
    else:
        with pytest.raises(ArtifactError, match="specialised the batch"):
            check_onnx(tmp_path / "g.onnx", spec, ["z"])


def _identity_graph(path, name: str, onnx_type: int, dims: list) -> None:
    import onnx
    from onnx import helper

    z = helper.make_tensor_value_info(name, onnx_type, dims)
    y = helper.make_tensor_value_info("image", onnx_type, dims)
    graph = helper.make_graph([helper.make_node("Identity", [name], ["image"])], "g", [z], [y])
    onnx.save(helper.make_model(graph), str(path))


@pytest.mark.parametrize("name, onnx_type, dims, match", [
    ("x", 1, ["B", 1, 4, 4], "graph inputs"), ("z", 10, ["B", 1, 4, 4], "FLOAT16"),
    ("z", 1, ["B", 1, 4, 5], "the contract says"), ("z", 1, ["B", 4, 4], "the contract says")])
def test_onnx_graph_inputs_are_checked_against_the_contract(tmp_path, name, onnx_type, dims, match) -> None:
    """Another input name, dtype or per-sample shape than the spec's is one ArtifactError line."""
    from fastflow.errors import ArtifactError
    from fastflow.export.contract import check_onnx
    from fastflow.export.spec import BatchRange, GeneratorSpec

    _identity_graph(tmp_path / "g.onnx", name, onnx_type, dims)
    with pytest.raises(ArtifactError, match=match):
        check_onnx(tmp_path / "g.onnx", GeneratorSpec("generator", (1, 4, 4), BatchRange(1, 2, 4)), ["z"])
