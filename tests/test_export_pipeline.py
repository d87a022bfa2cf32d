"""``fastflow-export --pipeline``: a text-to-image student as one artefact per component
(text_encoder, generator with CFG inside, vae_decoder) + pipeline.json, each validated against eager
PyTorch and chained; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers", reason="text pipelines need the 'diffusers' extra")
pytest.importorskip("onnxruntime", reason="ONNX validation needs onnxruntime")

from fastflow.cli.main import main  # noqa: E402
from fastflow.export.pipeline import chain, components, load_pipeline, read_pipeline  # noqa: E402
from tests.helpers import tiny_sd_student  # noqa: E402


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return tiny_sd_student(tmp_path_factory.mktemp("pipeline-student"))


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_text_student_exports_per_component_and_validates(student, tmp_path, fmt) -> None:
    ckpt, model = student
    out, report = tmp_path / "pipe", tmp_path / "report.json"
    assert main(["export", ckpt, "--format", fmt, "--pipeline", "-o", str(out), "--validate", "--cfg", "2",
                 "--min-batch", "1", "--max-batch", "2", "--report", str(report), "--device", "cpu"]) == 0
    manifest = read_pipeline(out)
    assert manifest["chain"] == ["text_encoder", "generator", "vae_decoder"] and manifest["cfg_scale"] == 2.0
    gen = manifest["components"]["generator"]
    assert [i["name"] for i in gen["inputs"]] == ["z", "emb"] and gen["inputs"][1]["shape"] == ["B", 16, 32]
    assert manifest["components"]["text_encoder"]["inputs"][0] == {"name": "tokens", "shape": ["B", 16],
                                                                    "dtype": "int64"}
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
    val = json.loads(report.read_text())["validation"]
    assert val["passed"] and all(val[k]["passed"] for k in ("text_encoder", "generator", "vae_decoder", "chain"))
    # the chained artefacts equal the student's own CFG sample, decoded, for a prompt of the table
    run = load_pipeline(out, torch.device("cpu"))
    from transformers import CLIPTokenizer

    ids = CLIPTokenizer.from_pretrained(out / "tokenizer")(["a red dog"], padding="max_length", max_length=16,
                                                           return_tensors="pt").input_ids
    z = torch.randn(1, 4, 8, 8)
    from fastflow.flow.sample import generate

    with torch.no_grad():
        expect = model.decode(generate(model, z, "one_step", cond=torch.tensor([1]), cfg_scale=2.0).x)
        got = chain(run, z, ids)
    assert torch.allclose(got, expect, atol=1e-4), (got - expect).abs().max()


def test_pipeline_bad_input_is_one_line(student, tmp_path, capsys) -> None:
    ckpt, model = student
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["export", ckpt, "--format", "onnx", "--pipeline", "-o", str(tmp_path / "full")]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["export", ckpt, "--format", "onnx", "--cfg", "2", "-o", str(tmp_path / "g.onnx")]) == 2
    assert "add --pipeline" in capsys.readouterr().err
    comps = components(model, __import__("fastflow.export.spec", fromlist=["x"]).GeneratorSpec(
        kind="generator", sample_shape=(4, 8, 8), batch=__import__("fastflow.export.spec", fromlist=["x"]).BatchRange(
            1, 1, 1)), 1.0, 77)
    assert [c.name for c in comps] == ["text_encoder", "generator", "vae_decoder"]
