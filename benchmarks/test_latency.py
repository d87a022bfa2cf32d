"""pytest-benchmark: one-step student vs teacher at Euler N, Heun and RK45, per backend.

On CPU (CI) small presets and few rounds; on a GPU (``-m gpu``) the CIFAR presets
``slim-15.7m`` vs ``rf-ddpmpp`` with eager, compiled and CUDA-graph backends. NFE, parameters
and the device go to ``extra_info``.
"""

import platform

import pytest
import torch

from fastflow.bench.latency import latency_suite, speedup_check
from fastflow.errors import MissingBackendError
from fastflow.export import CUDAGraphGenerator, Generator
from fastflow.flow import generate
from fastflow.metrics.cost import count_params
from fastflow.models import build_model

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
STUDENT, TEACHER = ("slim-15.7m", "rf-ddpmpp") if CUDA else ("digits-small", "digits")


def _model(preset: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model({"preset": preset}).to(DEVICE).eval()


@pytest.fixture(scope="module")
def models():
    s, t = _model(STUDENT), _model(TEACHER)
    c = s.config
    z = torch.randn(1, c.in_channels, c.resolution, c.resolution, device=DEVICE)
    return s, t, z


def _info(benchmark, model, solver, nfe, backend="eager") -> None:
    benchmark.extra_info.update(nfe=nfe, params=count_params(model), solver=solver, backend=backend,
                                device=torch.cuda.get_device_name() if CUDA else platform.machine())


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def test_student_one_step(benchmark, models) -> None:
    s, _, z = models
    _info(benchmark, s, "euler", 1)
    benchmark.pedantic(lambda: (generate(s, z, "euler", 1), _sync()), rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32, 64])
def test_teacher_euler(benchmark, models, n) -> None:
    _, t, z = models
    _info(benchmark, t, "euler", n)
    benchmark.pedantic(lambda: (generate(t, z, "euler", n), _sync()), rounds=3 if n > 8 else 5, warmup_rounds=1)


def test_teacher_heun(benchmark, models) -> None:
    _, t, z = models
    _info(benchmark, t, "heun", 7)
    benchmark.pedantic(lambda: (generate(t, z, "heun", 4), _sync()), rounds=3, warmup_rounds=1)


def test_teacher_rk45(benchmark, models) -> None:
    _, t, z = models
    nfe = float(generate(t, z, "rk45", rtol=1e-5, atol=1e-5).sample_nfe.float().mean())
    _info(benchmark, t, "rk45", nfe)
    benchmark.pedantic(lambda: (generate(t, z, "rk45", rtol=1e-5, atol=1e-5), _sync()), rounds=2,
                       warmup_rounds=1)


def test_one_step_cost_is_one_student_call_and_euler_n_is_n_teacher_calls(models) -> None:
    """The cost relation behind the one-step speedup, on deterministic proxies: a sampler calls the
    model exactly NFE times (forward hooks) and spends exactly NFE × one call's FLOPs
    (``torch.utils.flop_counter``), so Euler-N over one step costs ``N × teacher / student`` FLOPs;
    the suite's rows and ``speedup_check`` carry those FLOPs. Wall-clock speedups are recorded by
    the benchmarks and ``fastflow bench latency``, never asserted."""
    from torch.utils.flop_counter import FlopCounterMode

    from fastflow.metrics.cost import count_flops

    s, t, z = models
    per_call = {"student": count_flops(s, z), "teacher": count_flops(t, z)}
    for who, m, solver, steps, nfe in (("student", s, "euler", 1, 1), ("teacher", t, "euler", 4, 4),
                                       ("teacher", t, "euler", 16, 16), ("teacher", t, "heun", 4, 7)):
        calls = []
        hook = m.register_forward_pre_hook(lambda mod, args, calls=calls: calls.append(args[0].shape[0]))
        try:
            with FlopCounterMode(display=False) as counter:
                res = generate(m, z, solver, steps)
        finally:
            hook.remove()
        assert res.nfe == nfe and calls == [z.shape[0]] * nfe
        assert counter.get_total_flops() == nfe * per_call[who] > 0
    rows = latency_suite(s, t, z, ["eager"], euler_ns=[4, 16], heun_ns=[2], rk45=False, iters=1, warmup=0)
    assert all(r["flops"] == r["nfe"] * per_call[r["model"]] for r in rows)
    check = speedup_check(rows)
    assert [(c["N"], c["flops_ratio"]) for c in check] == [
        (n, n * per_call["teacher"] / per_call["student"]) for n in (4, 16)]
    assert all(c["measured_speedup"] > 0 and c["predicted_speedup"] > 0 for c in check)  # recorded, not judged


@pytest.mark.gpu
def test_cuda_graph_one_step(benchmark, models) -> None:
    s, _, z = models
    g = CUDAGraphGenerator(Generator(s, 1).eval(), z)
    out1 = g(z)
    out2 = g(torch.randn_like(z))
    assert not torch.equal(out1, out2)  # outputs are clones, not the static buffer
    with torch.no_grad():
        assert torch.allclose(out1, Generator(s, 1)(z), atol=1e-4)
    _info(benchmark, s, "euler", 1, "cudagraph")
    benchmark.pedantic(lambda: (g(z), _sync()), rounds=50, warmup_rounds=5)


@pytest.mark.gpu
def test_compiled_one_step(benchmark, models) -> None:
    from fastflow.export import compile_generator

    s, _, z = models
    g = compile_generator(s, 1)
    with torch.no_grad():
        g(z)
        _info(benchmark, s, "euler", 1, "compiled")
        benchmark.pedantic(lambda: (g(z), _sync()), rounds=50, warmup_rounds=5)


def _tiny_random() -> tuple[torch.nn.Module, torch.Tensor]:
    """A ``tiny`` model with random weights everywhere (non-trivial outputs) and a batch of noise."""
    torch.manual_seed(0)
    m = build_model({"preset": "tiny"}).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return m, torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("aoti", marks=pytest.mark.slow)])
def test_exported_backends_give_the_same_samples(backend) -> None:
    pytest.importorskip("onnxruntime")
    from fastflow.bench.latency import _exported_velocity

    m, z = _tiny_random()
    import tempfile
    from pathlib import Path

    vel = _exported_velocity(m, backend, z, Path(tempfile.mkdtemp()), fused=False)
    with torch.no_grad():
        ref = generate(m, z, "euler", 3).x
    assert torch.allclose(generate(vel, z, "euler", 3).x, ref, atol=1e-4)
    if backend == "onnxruntime":  # (an AOTInductor build takes ~30 s on CPU: one is enough)
        rows = latency_suite(m, m, z, [backend], euler_ns=[2], heun_ns=[], rk45=False, iters=3)
        assert {r["solver"] for r in rows} == {"call", "euler"} and all(r["p50_ms"] > 0 for r in rows)


@pytest.mark.slow  # ctest times the runner too (runner.timing)
def test_native_backend_times_the_runner_on_the_aoti_package(tmp_path) -> None:
    from fastflow.bench.latency import RUNNER_BUILD_PATH

    if not RUNNER_BUILD_PATH.is_file():
        pytest.skip("fastflow-run is not built (make native; make test builds it first)")
    torch.manual_seed(0)
    m = build_model({"preset": "tiny"}).eval()
    z = torch.randn(2, 3, 8, 8)
    rows = latency_suite(m, m, z, ["native"], euler_ns=[], heun_ns=[], rk45=False, iters=5, warmup=1)
    (row,) = rows
    assert (row["backend"], row["model"], row["nfe"], row["calls"]) == ("native", "student", 1.0, 5)
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert row["max_abs_vs_aoti"] == 0.0  # C++ and Python ran the same package on the same inputs


def test_native_backend_without_runner_is_one_line_exit_2(tmp_path) -> None:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "fastflow", "bench", "latency", "--backends", "eager,native",
                          "--runner", str(tmp_path / "nope"), "--out", str(tmp_path / "l.json"),
                          "--png", str(tmp_path / "l.png")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "make native" in res.stderr, res.stderr


def test_roofline_fields_follow_their_formula() -> None:
    """GFLOP/s × time = FLOPs, the fraction is against the peak of the row's precision."""
    from fastflow.bench.roofline import add_roofline, matmul_rate

    rows = [{"flops": 4e9, "p50_ms": 20.0}, {"flops": 4e9, "p50_ms": 10.0, "precision": "int8"}, {"p50_ms": 1.0}]
    add_roofline(rows, {"fp32_gflops": 400.0, "int8_gops": 1000.0, "threads": 3})
    assert rows[0]["gflop_per_s"] == pytest.approx(200.0) and rows[0]["fraction_of_peak"] == pytest.approx(0.5)
    assert rows[1]["gflop_per_s"] == pytest.approx(400.0) and rows[1]["fraction_of_peak"] == pytest.approx(0.4)
    assert rows[1]["peak_gflops"] == 1000.0 and rows[0]["threads"] == 3 and "gflop_per_s" not in rows[2]
    assert matmul_rate(torch.device("cpu"), "fp32", n=128, iters=2) > 0
    assert matmul_rate(torch.device("cpu"), "int8", n=128, iters=2) > 0


def test_generator_backends_time_openvino_and_int8_against_eager() -> None:
    """The OpenVINO and int8 rows: the student's generator, checked against eager PyTorch, with
    consistent roofline fields measured against the same run's matrix-multiply rates."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    m, z = _tiny_random()
    rows = latency_suite(m, m, z, ["eager", "openvino", "onnxruntime-int8", "openvino-int8"], euler_ns=[1],
                         heun_ns=[], rk45=False, iters=3, warmup=1)
    gen = {r["backend"]: r for r in rows if r["model"] == "student" and r["solver"] == "euler"}
    assert gen["openvino"]["precision"] == "fp32" and gen["openvino"]["max_abs_vs_eager"] < 1e-4
    with torch.no_grad():
        scale = float(Generator(m, 1)(z).abs().max())
    for b in ("onnxruntime-int8", "openvino-int8"):
        assert gen[b]["precision"] == "int8" and 0 < gen[b]["max_abs_vs_eager"] < 0.2 * scale
        assert gen[b]["peak_gflops"] == gen["openvino-int8"]["peak_gflops"] != gen["openvino"]["peak_gflops"]
    for r in rows:
        assert r["gflop_per_s"] * r["p50_ms"] * 1e6 == pytest.approx(r["flops"])
        assert r["fraction_of_peak"] == pytest.approx(r["gflop_per_s"] / r["peak_gflops"])
        assert r["threads"] == torch.get_num_threads()


# ~45 / ~120 s; make test validates a --prepack package (tests/test_export.py) and runs a --fused cpu
# package in ctest (runner.cpuk-*)
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["prepack", "cpuk"])
def test_package_rows_time_the_package_against_eager(kind) -> None:
    """``aoti-<kind>`` and ``native-<kind>``: the ``fastflow-export --prepack`` / ``--fused cpu``
    package from Python and from ``fastflow-run``, checked against eager; the runner's row carries its
    fastest call too."""
    from fastflow.bench.latency import find_runner

    try:
        find_runner(None)
    except MissingBackendError:
        pytest.skip("fastflow-run not built (make native)")
    m, z = _tiny_random()
    names = [f"aoti-{kind}", f"native-{kind}"]
    rows = latency_suite(m, m, z, names, euler_ns=[1], heun_ns=[], rk45=False, iters=3, warmup=1)
    gen = {r["backend"]: r for r in rows}
    assert set(gen) == set(names)
    for r in gen.values():
        assert r["precision"] == "fp32" and r["max_abs_vs_eager"] < 1e-4 and r["nfe"] == 1
    assert 0 < gen[names[1]]["min_ms"] <= gen[names[1]]["p50_ms"]
