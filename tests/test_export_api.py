"""The one export entry point, ``fastflow.export.export_checkpoint(source, ExportOptions)``: nothing
else builds artefacts, the options are typed and checked (a hostile-input table and a property
test), and every generator kind × format keeps a symbolic batch that runs at 1 and at the maximum
(the contract check of :mod:`fastflow.export.contract`, which runs on every export)."""

from __future__ import annotations

import inspect
import re
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastflow.errors import ConfigError, FastflowError
from fastflow.export import ExportOptions, export_checkpoint
from fastflow.export.formats import FORMATS, read_pt2_spec
from fastflow.export.spec import BatchRange
from fastflow.models import build_model, save_model

ROOT = Path(__file__).resolve().parents[1]
BUILDERS = r"build_onnx|build_pt2|build_ep|build_engine|build_trt_pt2|FORMATS\[[^]]*\]\.build|\.build\(gen|" \
           r"aoti_compile_and_package|torch\.onnx\.export|torch\.export\.save"


def _grep(pattern: str, *paths: str) -> list[str]:
    res = subprocess.run(["git", "grep", "-nE", pattern, "--", *paths], cwd=ROOT, capture_output=True, text=True)
    return [ln for ln in res.stdout.splitlines() if ln]


def test_nothing_outside_export_builds_an_artefact() -> None:
    """Format builders are called in ``fastflow/export/`` only (tests may monkeypatch them)."""
    assert _grep(BUILDERS, "*.py", ":!fastflow/export/", ":!tests/") == []


def test_no_spec_patching_and_no_global_export_flag() -> None:
    patched = r"\.extra\[[^]]*\] *=|\.extra\.update\(|kernels_in_export|_in_export\b"
    assert _grep(patched, "*.py", ":!tests/test_export_api.py") == []
    cli = (ROOT / "fastflow/cli/export.py").read_text()
    assert not re.search(r"\.build\(|\.load\(|compare\(|staged_artifact|torch\.", cli)  # parses and prints only


def test_every_format_has_one_build_signature_and_an_extension() -> None:
    from fastflow.export.formats import BuildOptions

    for name, fmt in FORMATS.items():
        params = list(inspect.signature(fmt.build).parameters)
        assert params == ["gen", "example", "spec", "path", "options"], name
        assert fmt.build.__name__.startswith("build_") and fmt.extension.startswith("."), name
    assert BuildOptions().opset == 19


#: option overrides → the word the one-line refusal must carry
HOSTILE = [
    ({"format": "tensorrt"}, "unknown format"),
    ({"dtype": "fp8"}, "dtype is one of"),
    ({"steps": 0}, "steps >= 1"),
    ({"opset": 17}, "opset >= 18"),
    ({"cfg": float("nan")}, "finite cfg"),
    ({"atol": -1.0}, "tolerances"),
    ({"fused": "gpu"}, "fused must be one of"),
    ({"quantize": "int4"}, "int8"),
    ({"calibrate": 16}, "add --quantize"),
    ({"format": "onnx", "prepack": True}, "--prepack"),
    ({"format": "onnx", "fused": "cpu"}, "--fused cpu"),
    ({"fused": "cpu", "dtype": "fp16"}, "--fused cpu"),
    ({"fused": "cpu", "prepack": True}, "use one"),
    ({"pipeline": True, "quantize": "int8"}, "single-file"),
    ({"cfg": 2.0}, "--pipeline"),
    ({"pipeline": True, "components": ("unet",)}, "--components"),
    ({"velocity": True, "steps": 2}, "--velocity"),
    ({"quantize": "int8", "fused": "triton"}, "drop --fused"),
]


@pytest.mark.parametrize("bad, word", HOSTILE)
def test_hostile_options_are_one_typed_line(tmp_path, bad, word) -> None:
    with pytest.raises(FastflowError, match=re.escape(word)) as e:
        ExportOptions(**{"format": "pt2", "output": tmp_path / "g.pt2", **bad})
    assert "\n" not in str(e.value)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(fmt=st.sampled_from(["onnx", "pt2", "ep", "x"]), dtype=st.sampled_from(["fp32", "fp16", "int8"]),
       steps=st.integers(-2, 3), fused=st.sampled_from(["auto", "off", "on", "triton", "cpu", "", "ON"]),
       quantize=st.sampled_from(["", "int8", "x"]), prepack=st.booleans(), pipeline=st.booleans(),
       cfg=st.floats(allow_nan=True, allow_infinity=True, width=32), calibrate=st.integers(-1, 4),
       velocity=st.booleans(), external=st.booleans())
def test_options_construct_or_refuse_in_one_typed_line(fmt, dtype, steps, fused, quantize, prepack, pipeline, cfg,
                                                        calibrate, velocity, external) -> None:
    try:
        o = ExportOptions(format=fmt, output=Path("g"), dtype=dtype, steps=steps, fused=fused, quantize=quantize,
                          prepack=prepack, pipeline=pipeline, cfg=cfg, calibrate=calibrate, velocity=velocity,
                          external_data=external)
    except FastflowError as e:
        assert "\n" not in str(e)
        return
    assert o.fused in ("auto", "off", "triton", "cpu") and o.steps >= 1 and o.format in FORMATS


def _model(kind: str) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    spec = {"arch": "unet", "in_channels": 1, "resolution": 8, "channels": 8, "num_res_blocks": 1, "ch_mult": (1, 2),
            "attn_resolutions": (4,), "dropout": 0.0}
    extra, meta = {"class": {"num_classes": 3}, "sr": {"cond_channels": 1}, "two-time": {"times": 2},
                   "token": {"context_dim": 8}}.get(kind, {}), {}
    if kind == "sr":
        meta = {"objective_config": {"name": "oftsr", "sigma_p": 0.2}}
    m = build_model({**spec, **extra})
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m, meta


KINDS = ("unconditional", "class", "sr", "two-time", "token")
FAST = [(k, "onnx", 4) for k in KINDS]  # .pt2 packages: test_export.py, and ctest's fixtures (batch 1..4) run them
SLOW = [(k, f, b) for k in KINDS for f in ("onnx", "pt2") for b in (3, 4, 8) if (k, f, b) not in FAST]


def _export_kind(tmp_path: Path, kind: str, fmt: str, max_batch: int) -> None:
    import onnx

    model, meta = _model(kind)
    save_model(tmp_path / "ckpt", model, model, meta=meta)
    out = tmp_path / ("pipe" if kind == "token" else f"g.{fmt}")
    result = export_checkpoint(tmp_path / "ckpt", ExportOptions(
        format=fmt, output=out, batch=BatchRange(1, max_batch, max_batch), fused="off", pipeline=kind == "token",
        context_length=3), say=lambda _: None)
    path = out / f"generator.{fmt}" if kind == "token" else out
    if fmt == "onnx":
        for i in onnx.load(str(path), load_external_data=False).graph.input:
            assert not i.type.tensor_type.shape.dim[0].HasField("dim_value"), (kind, i.name)  # symbolic batch
    else:
        assert read_pt2_spec(path) == result.spec and result.spec.batch == BatchRange(1, max_batch, max_batch)
    run = FORMATS[fmt].load(path, torch.device("cpu"))
    from fastflow.export.api import _inputs

    for b in (1, max_batch):  # runs at both ends of its range
        assert run(*_inputs(result.spec, 0)(b)).shape[0] == b


@pytest.mark.parametrize("kind, fmt, max_batch", FAST)
def test_every_kind_keeps_a_symbolic_batch(tmp_path, kind, fmt, max_batch) -> None:
    pytest.importorskip("onnxscript")
    _export_kind(tmp_path, kind, fmt, max_batch)


@pytest.mark.slow  # 15 pt2 and 10 ONNX builds (~10 min); make test runs each kind in ONNX (FAST)
@pytest.mark.parametrize("kind, fmt, max_batch", SLOW)
def test_every_kind_keeps_a_symbolic_batch_everywhere(tmp_path, kind, fmt, max_batch) -> None:
    pytest.importorskip("onnxscript")
    _export_kind(tmp_path, kind, fmt, max_batch)


def test_a_specialised_batch_is_refused_before_rename(tmp_path) -> None:
    """A forward that reads ``len(x)`` (the SD adapter's defect) is one ArtifactError; nothing is
    left under the final name."""
    pytest.importorskip("onnxscript")
    from fastflow.errors import ArtifactError

    class Specialising(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("C", (), {"in_channels": 1, "resolution": 4})()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x, t, cond=None):  # noqa: ANN001, ANN201
            return x * self.w + torch.zeros(len(x), 1, 1, 1)

    out = tmp_path / "g.onnx"
    with pytest.raises(ArtifactError, match="specialised the batch"):
        export_checkpoint(Specialising(), ExportOptions(format="onnx", output=out, batch=BatchRange(1, 4, 4),
                                                         fused="off"), say=lambda _: None)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_library_and_cli_write_the_same_contract(tmp_path) -> None:
    """``fastflow-export`` is a parser over the entry point: same spec, same graph output."""
    import json

    from fastflow.cli.main import main

    pytest.importorskip("onnxscript")
    model, _ = _model("unconditional")
    save_model(tmp_path / "ckpt", model, model)
    assert (
        main(
            [
                "export",
                str(tmp_path / "ckpt"),
                "--format",
                "onnx",
                "--max-batch",
                "2",
                "-o",
                str(tmp_path / "a.onnx"),
                "--iters",
                "0",
                "--fused",
                "off",
                "--report",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    lib = export_checkpoint(tmp_path / "ckpt", ExportOptions(format="onnx", output=tmp_path / "b.onnx",
                                                             batch=BatchRange(1, 2, 2), fused="off"), say=print)
    assert json.loads((tmp_path / "r.json").read_text())["spec"] == json.loads(json.dumps(lib.spec.to_dict()))
    assert lib.spec.checkpoint_sha256
    z = torch.randn(2, 1, 8, 8)
    run = [FORMATS["onnx"].load(tmp_path / f, torch.device("cpu")) for f in ("a.onnx", "b.onnx")]
    assert torch.equal(run[0](z), run[1](z))


def test_a_model_in_memory_exports_without_a_checkpoint(tmp_path) -> None:
    model, _ = _model("unconditional")
    r = export_checkpoint(model, ExportOptions(format="onnx", output=tmp_path / "g.onnx", batch=BatchRange(1, 2, 2),
                                               validate=True, fused="off"), say=lambda _: None)
    assert r.passed and r.spec.checkpoint_sha256 == "" and r.report["validation"]["max_abs_err"] < 1e-4
    with pytest.raises(ConfigError, match="velocity"):
        export_checkpoint(_model("sr")[0], ExportOptions(format="onnx", output=tmp_path / "v.onnx", velocity=True))


def test_a_swapped_model_is_refused_as_a_source(tmp_path) -> None:
    """Kernels come from ``ExportOptions.fused`` (and so reach the contract), not from a swapped model."""
    from fastflow.fused import apply

    model, _ = _model("unconditional")
    apply(model, "triton", "cpu")
    with pytest.raises(ConfigError, match="model as built"):
        export_checkpoint(model, ExportOptions(format="onnx", output=tmp_path / "g.onnx"))
    assert not (tmp_path / "g.onnx").exists()


def test_onnx_is_one_file_unless_asked(tmp_path) -> None:
    """A graph that fits is one self-contained ``.onnx`` (copied alone, it loads); ``external_data``
    puts the weights in ``NAME.data``."""
    pytest.importorskip("onnxscript")
    import shutil

    model, _ = _model("unconditional")
    one = export_checkpoint(model, ExportOptions(format="onnx", output=tmp_path / "a" / "g.onnx", fused="off"),
                            say=lambda _: None)
    assert sorted(p.name for p in one.path.parent.iterdir()) == ["g.onnx"]
    (tmp_path / "moved").mkdir()
    shutil.copy(one.path, tmp_path / "moved" / "g.onnx")
    z = torch.randn(2, 1, 8, 8)
    FORMATS["onnx"].load(tmp_path / "moved" / "g.onnx", torch.device("cpu"))(z)
    two = export_checkpoint(model, ExportOptions(format="onnx", output=tmp_path / "b" / "g.onnx", fused="off",
                                                 external_data=True), say=lambda _: None)
    assert sorted(p.name for p in two.path.parent.iterdir()) == ["g.onnx", "g.onnx.data"]
    with pytest.raises(ConfigError, match="--external-data"):
        ExportOptions(format="pt2", output=tmp_path / "c.pt2", external_data=True)
