"""A rehearsal of ``benchmarks/sd15_size_export.py`` on tiny configs: every phase runs (random
folder + student, ONNX pipeline, pt2 text encoder + VAE, pt2 UNet under its time limit) and the
results record what the real-size run reports."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("diffusers", reason="the SD-size benchmark needs the 'diffusers' extra")
pytest.importorskip("onnxruntime", reason="the SD-size benchmark validates ONNX with onnxruntime")

from tests.helpers import ROOT, tiny_sd_configs  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import sd15_size_export  # noqa: E402

from fastflow.utils.io import read_json


@pytest.mark.slow
def test_every_phase_runs_and_is_recorded(tmp_path) -> None:
    configs = tiny_sd_configs(tmp_path / "configs")
    out = tmp_path / "r.json"
    assert sd15_size_export.main(["--work", str(tmp_path / "w"), "--out", str(out), "--configs", str(configs),
                                  "--iters", "1", "--threads", "1"]) == 0
    r = read_json(out)
    assert set(r["phases"]) == {"folder_and_student", "onnx_all", "pt2_text_encoder_vae", "pt2_generator"}
    assert r["params"]["unet"] > 0 and all(p["peak_rss_gb"] > 0 for p in r["phases"].values())
    onnx = r["phases"]["onnx_all"]
    assert {"generator.onnx", "text_encoder.onnx", "vae_decoder.onnx", "pipeline.json"} <= set(onnx["file_bytes"])
    for name in ("text_encoder", "generator", "vae_decoder"):
        assert onnx[name]["max_abs_err"] < 1e-4 and onnx[name]["latency_ms"]["p50_ms"] > 0
    assert r["phases"]["pt2_generator"]["generator"]["max_abs_err"] < 1e-4
