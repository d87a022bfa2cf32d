"""``fastflow-export --pipeline``: a text-to-image student as one artefact per component
(text_encoder, generator with CFG inside, vae_decoder) + pipeline.json, each validated against eager
PyTorch and chained; bad input is one line."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="text pipelines need the 'diffusers' extra")
pytest.importorskip("onnxruntime", reason="ONNX validation needs onnxruntime")

from fastflow.cli.main import main  # noqa: E402
from fastflow.export.pipeline import chain, components, load_pipeline, read_pipeline  # noqa: E402
from fastflow.export.spec import BatchRange, GeneratorSpec  # noqa: E402
from fastflow.flow.sample import generate  # noqa: E402
from fastflow.models.prompts import tokenize_prompts  # noqa: E402
from tests.helpers import tiny_sd_student  # noqa: E402


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return tiny_sd_student(tmp_path_factory.mktemp("pipeline-student"))


def _export(ckpt: str, fmt: str, out, report) -> None:
    assert main(["export", ckpt, "--format", fmt, "--pipeline", "-o", str(out), "--validate", "--cfg", "2",
                 "--min-batch", "1", "--max-batch", "2", "--report", str(report), "--device", "cpu"]) == 0


@pytest.fixture(scope="module")
def pt2_pipeline(student, tmp_path_factory):
    """The student's pt2 pipeline (three AOTInductor compiles: built once for the module)."""
    tmp = tmp_path_factory.mktemp("pt2-pipeline")
    _export(student[0], "pt2", tmp / "pipe", tmp / "report.json")
    return tmp / "pipe", tmp / "report.json"


def _check(out, report, model) -> None:
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
    ids = tokenize_prompts(out, ["a red dog"])
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        expect = model.decode(generate(model, z, "one_step", cond=torch.tensor([1]), cfg_scale=2.0).x)
        got = chain(run, z, ids)
    assert torch.allclose(got, expect, atol=1e-4), (got - expect).abs().max()


def test_onnx_pipeline_per_component(student, tmp_path) -> None:
    _export(student[0], "onnx", tmp_path / "pipe", tmp_path / "report.json")
    _check(tmp_path / "pipe", tmp_path / "report.json", student[1])


@pytest.mark.slow  # ~110 s with its fixture: three AOTInductor compiles (the ONNX pipeline test stays in make test)
def test_pt2_pipeline_per_component(student, pt2_pipeline) -> None:
    _check(*pt2_pipeline, student[1])


def _runner(*args: str) -> subprocess.CompletedProcess[str]:
    from fastflow.bench.latency import RUNNER_BUILD_PATH

    if not RUNNER_BUILD_PATH.is_file():
        pytest.skip("fastflow-run is not built (make native)")
    return subprocess.run([str(RUNNER_BUILD_PATH), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # shares the .pt2 pipeline fixture above
def test_runner_chains_the_pt2_pipeline_like_python(pt2_pipeline, tmp_path) -> None:
    """fastflow-run DIR --tokens (from `fastflow prompts --ids`) or --emb equals Python's chain exactly
    (both on one thread); bad pipeline inputs are one line, exit 2."""
    out, _ = pt2_pipeline
    (tmp_path / "p.txt").write_text("a red dog\na cat\n")
    assert main(["prompts", str(out), str(tmp_path / "p.txt"), "--ids", str(tmp_path / "ids.npy")]) == 0
    ids = torch.from_numpy(np.load(tmp_path / "ids.npy"))
    r = _runner(str(out), "--tokens", str(tmp_path / "ids.npy"), "--seed", "3", "--out", str(tmp_path / "o.npy"),
                "--png", str(tmp_path / "g.png"))
    assert r.returncode == 0, r.stderr
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = load_pipeline(out, torch.device("cpu"))
        torch.manual_seed(3)
        z = torch.randn(2, 4, 8, 8)
        expect = chain(run, z, ids)
        emb = run["text_encoder"](ids[:1])[0]
        np.save(tmp_path / "emb.npy", emb.numpy())  # [L, D]: repeated over --batch
        r = _runner(str(out), "--emb", str(tmp_path / "emb.npy"), "--batch", "2", "--seed", "3",
                    "--out", str(tmp_path / "e.npy"))
        assert r.returncode == 0, r.stderr
        expect_emb = run["vae_decoder"](run["generator"](z, emb.expand(2, -1, -1).contiguous()))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "o.npy")), expect)
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "e.npy")), expect_emb)
    assert (tmp_path / "g.png").is_file()
    np.save(tmp_path / "bad-ids.npy", np.full((1, 16), 10_000, dtype=np.int64))
    np.save(tmp_path / "bad-emb.npy", np.zeros((1, 16, 5), dtype=np.float32))
    for args, word in [(["--tokens", "bad-ids.npy"], "vocabulary"), (["--emb", "bad-emb.npy"], "embeddings have shape"),
                       (["--tokens", "ids.npy", "--emb", "emb.npy"], "exactly one"),
                       (["--tokens", "ids.npy", "--batch", "3"], "disagrees"), ([], "exactly one")]:
        args = [str(tmp_path / a) if a.endswith(".npy") else a for a in args]
        r = _runner(str(out), *args, "--out", str(tmp_path / "x.npy"))
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and word in r.stderr, (args, r.stderr)
    r = _runner(str(tmp_path), "--emb", str(tmp_path / "emb.npy"), "--out", str(tmp_path / "x.npy"))
    assert r.returncode == 2 and "not a pipeline directory" in r.stderr
    assert not (tmp_path / "x.npy").exists()


def test_pipeline_bad_input_is_one_line(student, tmp_path, capsys) -> None:
    ckpt, model = student
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["export", ckpt, "--format", "onnx", "--pipeline", "-o", str(tmp_path / "full")]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["export", ckpt, "--format", "onnx", "--cfg", "2", "-o", str(tmp_path / "g.onnx")]) == 2
    assert "add --pipeline" in capsys.readouterr().err
    spec = GeneratorSpec(kind="generator", sample_shape=(4, 8, 8), batch=BatchRange(1, 1, 1))
    assert [c.name for c in components(model, spec, 1.0, 77)] == ["text_encoder", "generator", "vae_decoder"]
    uncond = tmp_path / "uncond"
    assert main(["train", "toy2d", f"out_dir={uncond}", "train.steps=1", "train.progress=false",
                 "train.tensorboard=false", "train.sample_every=0"]) == 0
    assert main(["export", str(uncond), "--format", "onnx", "--pipeline", "-o", str(tmp_path / "u")]) == 2
    assert "text-conditioned students" in capsys.readouterr().err


def test_token_conditioned_unet_exports_its_generator_alone(tmp_path) -> None:
    """A fastflow UNet with cross-attention (no text encoder or VAE of its own): the pipeline is its
    generator ``(z, emb) → image`` over ``--context-length`` tokens, CFG against its learned null context."""
    from fastflow.models import build_model, save_model

    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "context_dim": 8})
    (tmp_path / "ckpt").mkdir()
    save_model(tmp_path / "ckpt", model)
    out = tmp_path / "pipe"
    assert main(["export", str(tmp_path / "ckpt"), "--format", "onnx", "--pipeline", "-o", str(out), "--cfg", "1.5",
                 "--context-length", "5", "--max-batch", "2", "--validate", "--iters", "0"]) == 0
    manifest = read_pipeline(out)
    assert manifest["chain"] == ["generator"] and "tokenizer" not in manifest
    assert manifest["components"]["generator"]["inputs"][1]["shape"] == ["B", 5, 8]
    run = load_pipeline(out, torch.device("cpu"))
    z, emb = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8)
    with torch.no_grad():
        expect = generate(model, z, "one_step", cond=emb, cfg_scale=1.5).x
    assert torch.allclose(chain(run, z, emb), expect, atol=1e-4)
    assert main(["export", str(tmp_path / "ckpt"), "--format", "onnx", "--pipeline", "-o", str(tmp_path / "x"),
                 "--components", "text_encoder"]) == 2


def test_onnx_generator_batch_stays_dynamic_beyond_two(student, tmp_path) -> None:
    """--max-batch 4: the generator's graph keeps a symbolic batch (``len(x)`` in the SD adapter used
    to fix it at 4 under torch.export while pipeline.json said 1..4) and runs at every batch of its range."""
    import onnx

    out = tmp_path / "pipe"
    assert main(["export", student[0], "--format", "onnx", "--pipeline", "--components", "generator", "-o", str(out),
                 "--min-batch", "1", "--max-batch", "4", "--validate", "--device", "cpu"]) == 0
    graph = onnx.load(str(out / "generator.onnx"), load_external_data=False).graph
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in graph.input), graph.input
    run = load_pipeline(out, torch.device("cpu"))["generator"]
    for b in (1, 3, 4):
        assert run(torch.randn(b, 4, 8, 8), torch.randn(b, 16, 32)).shape == (b, 4, 8, 8)
