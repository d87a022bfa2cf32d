"""A rehearsal of ``benchmarks/cpu_roofline.py`` on a tiny preset: every row carries consistent
roofline fields, each thread count times the no-work generator (the backend's fixed cost per call),
and the README tables are generated from the JSON."""

from __future__ import annotations

import sys

import pytest
import torch

from fastflow.utils.io import read_json

pytest.importorskip("onnxruntime", reason="the CPU roofline times ONNX Runtime")

from tests.helpers import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import cpu_roofline  # noqa: E402


def test_rows_floor_and_table(tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    assert (
        cpu_roofline.main(
            [
                "--preset",
                "tiny",
                "--backends",
                "eager,onnxruntime",
                "--batch",
                "1,2",
                "--threads",
                "1",
                "--iters",
                "4",
                "--iters-large",
                "4",
                "--rounds",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    doc = read_json(out)
    assert [(r["batch"], r["backend"]) for r in doc["rows"]] == [(1, "eager"), (1, "onnxruntime"), (2, "eager"),
                                                                 (2, "onnxruntime")]
    for r in doc["rows"]:
        assert r["model"] == "tiny (random)" and r["threads"] == 1 and r["max_abs_vs_eager"] < 1e-4
        assert (
            r["calls"] == 4
            and len(r["p50_rounds_ms"]) == 2
            and r["p50_ms"] == pytest.approx(sum(r["p50_rounds_ms"]) / 2)
        )
        assert r["fp32_peak_gflops"] == max(r["fp32_peak_rounds_gflops"]) and 0 < r["min_ms"] <= r["p50_ms"]
        assert r["gflop_per_s"] * r["p50_ms"] * 1e6 == pytest.approx(r["flops"])
        assert r["fraction_of_peak"] == pytest.approx(r["gflop_per_s"] / r["fp32_peak_gflops"])
    assert doc["rows"][2]["flops"] == 2 * doc["rows"][0]["flops"] > 0
    floor = doc["call_floor"]
    assert [r["backend"] for r in floor] == ["eager", "onnxruntime"]
    assert all(r["flops"] == 0 and r["p50_ms"] > 0 and r["max_abs_vs_eager"] < 1e-6 for r in floor)
    table = cpu_roofline.table(doc)
    assert table in capsys.readouterr().out
    assert "| eager | " in table and "| onnxruntime | " in table and "1 thread(s)" in table


def test_call_floor_is_its_closed_form() -> None:
    """The no-work generator is ``z + (1 − ε)·ε·z``: it only moves the student's tensors."""
    from fastflow.export import Generator
    from fastflow.flow.time import DEFAULT_EPS
    from fastflow.metrics.cost import count_flops

    z = torch.randn(3, 1, 4, 4)
    got = Generator(cpu_roofline.CallFloor(tuple(z.shape[1:])), 1)(z)
    torch.testing.assert_close(got, z + (1 - DEFAULT_EPS) * DEFAULT_EPS * z)
    assert count_flops(cpu_roofline.CallFloor(tuple(z.shape[1:])), z) == 0


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--quality-only"], "add --fgd"),
        (["--rounds", "0"], "--rounds"),
        (["--iters", "-1"], "--iters"),
        (["--batch", "0"], "--batch"),
        (["--backends", "eager,tensorrt"], "--backends"),
    ],
)
def test_bad_arguments_exit_2(capsys, argv, match) -> None:
    with pytest.raises(SystemExit) as e:
        cpu_roofline.main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_cpu_name_gives_the_model_and_its_matrix_extensions(tmp_path) -> None:
    """What results record as the CPU: the first processor's model name and its matrix-relevant flags."""
    from fastflow.utils.threads import cpu_name, device_name

    info = tmp_path / "cpuinfo"
    cpu = "processor\t: {}\nmodel name\t: Fake CPU\nflags\t\t: fpu sse avx2 fma avx512f amx_int8 {}\n"
    info.write_text(cpu.format(0, "") + "\n" + cpu.format(1, "amx_bf16"))
    assert cpu_name(info) == "Fake CPU, avx2+avx512f+amx_int8"
    info.write_text("processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: fpu sse\n")
    assert cpu_name(info) == "Old CPU, no AVX2"
    assert cpu_name(tmp_path / "absent")  # the platform's name
    assert device_name(torch.device("cpu")) == f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)"
