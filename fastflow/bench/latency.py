"""One-step student vs multi-step teacher latency, per backend.

Backends wrap the *velocity model* and samplers loop in Python around it (``eager``,
``compiled``, ``onnxruntime``, ``aoti`` — the latter two run the exported velocity net at a
fixed batch), or a whole fixed-step generator is captured as one CUDA graph (``cudagraph``).
The student's one-step *generator* is also exported as one AOTInductor package: ``aoti`` times it
from Python and ``native`` times the C++ runner ``fastflow-run`` on the same package and inputs
(student row only; its output is checked against Python's).
The CPU backends of :mod:`fastflow.bench.artefacts` time the student's generator as ONNX in
OpenVINO and as int8 artefacts. Rows report NFE, FLOPs per generation (``torch.utils.flop_counter``),
latency percentiles, parameters and the roofline fields of :mod:`fastflow.bench.roofline`;
:func:`speedup_check` sets the measured one-step speedup over Euler-N beside two predictions
, ``N × (teacher call / student call)`` in time and the same ratio in FLOPs. It records
numbers for a report; nothing asserts on the timings (tests check the FLOPs and call counts).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fastflow.bench.artefacts import GENERATOR_BACKENDS, NATIVE, Artefacts, generator_row
from fastflow.bench.roofline import add_roofline, peaks
from fastflow.errors import ConfigError, MissingBackendError
from fastflow.export import ExportOptions, export_checkpoint
from fastflow.export.compile import CUDAGraphGenerator
from fastflow.export.formats import FORMATS, load_onnx, load_pt2
from fastflow.export.generator import Generator
from fastflow.export.spec import BatchRange
from fastflow.flow.sample import generate
from fastflow.fused import apply as apply_fused
from fastflow.metrics.cost import count_flops, count_params
from fastflow.utils.images import pyplot, save_figure
from fastflow.utils.io import read_json
from fastflow.utils.timing import measure_latency

EULER_NS = (1, 2, 4, 8, 16, 32, 64)


#: the same paths with the Triton-fused GroupNorm/attention swapped in (CUDA; CPU only under the interpreter)
FUSED_BACKENDS = ("fused", "fused+compiled", "fused+cudagraph", "fused+aoti")
#: eager with the CPU block kernel swapped in (``--fused cpu``; CPU, inference)
CPU_KERNEL_BACKENDS = ("cpuk",)
BACKENDS = ("eager", "compiled", "cudagraph", "onnxruntime", "aoti", "native", *FUSED_BACKENDS, *CPU_KERNEL_BACKENDS,
            *GENERATOR_BACKENDS)
#: backend prefix → the kernel path (fastflow.fused.apply mode) its models run
PATHS = {"fused": "triton", "cpuk": "cpu"}


def split_backend(backend: str) -> tuple[str, str]:
    """The kernel path and the base backend: ``"fused+compiled"`` → ``("triton", "compiled")``,
    ``"fused"`` → ``("triton", "eager")``, ``"cpuk"`` → ``("cpu", "eager")``, ``"aoti"`` → ``("off", "aoti")``."""
    if backend in PATHS:
        return PATHS[backend], "eager"
    prefix, _, base = backend.rpartition("+")
    return PATHS.get(prefix, "off"), base


def kernel_copy(model: nn.Module, path: str) -> nn.Module:
    """A copy of ``model`` with the kernels of ``path`` in (``fastflow.fused.apply``)."""
    copy = deepcopy(model)
    apply_fused(copy, path)
    return copy
RUNNER_BUILD_PATH = Path(__file__).resolve().parents[2] / "build" / "kernels" / "fastflow-run"


def find_runner(path: str | None = None) -> Path:
    """``fastflow-run``: the given path, the repository's ``build/`` (``make native``), or PATH."""
    found = path or (str(RUNNER_BUILD_PATH) if RUNNER_BUILD_PATH.is_file() else shutil.which("fastflow-run"))
    if not found or not Path(found).is_file():
        raise MissingBackendError("the native backend needs the C++ runner: run `make native` "
                                  "(or pass --runner PATH to fastflow-run)")
    return Path(found)


def native_latency(runner: Path, package: Path, z: Tensor, iters: int, warmup: int,
                   workdir: Path) -> tuple[dict[str, float], Tensor]:
    """Latency percentiles from ``fastflow-run --iters`` on ``package`` with noise ``z`` (same
    thread count as this process), and the image it wrote."""
    np.save(workdir / "z.npy", z.float().cpu().numpy())
    cmd = [str(runner), str(package), "--input", str(workdir / "z.npy"), "--out", str(workdir / "native.npy"),
           "--iters", str(iters), "--warmup", str(warmup), "--threads", str(torch.get_num_threads()),
           "--timing-json", str(workdir / "native.json"), "--device", z.device.type]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise MissingBackendError(f"fastflow-run failed (exit {res.returncode}): {res.stderr.strip()}")
    t = read_json(workdir / "native.json", MissingBackendError)
    lat = {k: float(t[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms")} | {"calls": int(t["calls"])}
    return lat, torch.from_numpy(np.load(workdir / "native.npy"))


@dataclass
class _Suite:
    """What every backend's rows share: noise, models (plain and fused), costs, artefacts."""

    z: Tensor
    models: dict[str, tuple[nn.Module, nn.Module]]  # kernel path → (student, teacher)
    params: dict[str, int]
    flops: dict[str, int]  # per batched call
    workdir: Path
    iters: int
    warmup: int
    artefacts: dict[str, Artefacts]  # kernel path → the student's generator artefacts (built on first use)


def _exported_velocity(model: nn.Module, backend: str, example: Tensor, workdir: Path,
                       fused: bool) -> Callable[..., Tensor]:
    """The velocity model (as built; ``fused``: with the Triton kernels kept) as an ONNX Runtime
    session or an AOTInductor package at the batch of ``example``
    (:func:`~fastflow.export.export_checkpoint` with ``velocity``)."""
    fmt, b = ("onnx" if backend == "onnxruntime" else "pt2"), example.shape[0]
    path = workdir / f"velocity-{id(model)}{'-fused' if fused else ''}.{fmt}"
    export_checkpoint(model, ExportOptions(format=fmt, output=path, batch=BatchRange(b, b, b), device=example.device,
                                           fused="triton" if fused else "off", velocity=True), say=lambda _: None)
    run = FORMATS[fmt].load(path, example.device)
    return lambda x, t, cond=None: run(x, t).to(x.device)


def _backend_model(suite: _Suite, path: str, backend: str) -> tuple[Callable[..., Tensor], ...]:
    """(student, teacher) as ``backend`` runs them with the kernels of ``path``."""
    if backend in ("eager", "cudagraph"):
        return suite.models[path]
    if backend == "compiled":
        return tuple(torch.compile(m, fullgraph=True, dynamic=False) for m in suite.models[path])
    if backend in ("onnxruntime", "aoti"):
        return tuple(_exported_velocity(m, backend, suite.z, suite.workdir, path == "triton")
                     for m in suite.models["off"])
    raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def _sampler(model: Callable[..., Tensor], backend: str, solver: str, steps: int | None,
             z: Tensor) -> Callable[[], Any]:
    if backend == "cudagraph":
        if solver != "euler":
            raise ConfigError("cudagraph backend captures fixed-step Euler generators only")
        graph = CUDAGraphGenerator(Generator(model, steps).eval(), z)
        return lambda: graph(z)
    return lambda: generate(model, z, solver, steps)


def latency_suite(student: nn.Module, teacher: nn.Module, z: Tensor, backends: Sequence[str] = ("eager",),
                  euler_ns: Sequence[int] = EULER_NS, heun_ns: Sequence[int] = (4,), rk45: bool = True,
                  iters: int = 20, warmup: int = 3, runner: str | None = None) -> list[dict[str, Any]]:
    """Latency rows for every (model, backend, solver) of the suite at the batch of ``z``; the
    ``fused*`` backends time copies of the models with the Triton kernels swapped in, ``cpuk`` with
    the CPU block kernel, the
    :data:`~fastflow.bench.artefacts.GENERATOR_BACKENDS` the student's generator artefacts. Every
    row carries its roofline fields against the matrix-multiply rate measured first
    (:mod:`fastflow.bench.roofline`)."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    on_cpu = [b for b in backends if b in GENERATOR_BACKENDS or b in CPU_KERNEL_BACKENDS or b == "onnxruntime"]
    if on_cpu and z.device.type != "cpu":
        raise ConfigError(f"backend {on_cpu[0]} runs on the CPU (--device cpu)")
    peak = peaks(z.device, int8=any(b.endswith("int8") for b in backends))
    runner_path = find_runner(runner) if set(NATIVE) & set(backends) else None
    student, teacher = student.eval(), teacher.eval()
    models = {"off": (student, teacher)}
    for path in {split_backend(b)[0] for b in backends} - {"off"}:
        models[path] = (kernel_copy(student, path), kernel_copy(teacher, path))
    workdir = Path(tempfile.mkdtemp(prefix="fastflow-bench-"))
    suite = _Suite(z, models, {"student": count_params(student), "teacher": count_params(teacher)},
                   {"student": count_flops(student, z), "teacher": count_flops(teacher, z)}, workdir, iters, warmup,
                   {path: Artefacts(student, z, workdir, path == "triton") for path in models if path != "cpu"})
    native = lambda pkg: native_latency(runner_path, pkg, z, iters, warmup, workdir)  # noqa: E731
    rows: list[dict[str, Any]] = []
    for backend in backends:
        if backend == "native" or backend in GENERATOR_BACKENDS:
            rows.append(generator_row(suite.artefacts["off"], backend, suite.flops["student"],
                                      suite.params["student"], iters, warmup, native))
        else:
            rows += _backend_rows(suite, backend, euler_ns, heun_ns, rk45)
    add_roofline(rows, peak)
    return rows


def _backend_rows(suite: _Suite, backend: str, euler_ns: Sequence[int], heun_ns: Sequence[int],
                  rk45: bool) -> list[dict[str, Any]]:
    """One velocity call of each model, then every sampler of the plan, on one backend."""
    path, base = split_backend(backend)
    z, dev, rows = suite.z, suite.z.device, []
    s_m, t_m = _backend_model(suite, path, base)
    t = torch.full((z.shape[0],), 0.5, device=dev)
    plan: list[tuple[str, Callable[..., Tensor], str, int | None]] = [("student", s_m, "euler", 1)]
    plan += [("teacher", t_m, "euler", n) for n in euler_ns]
    if base != "cudagraph":
        plan += [("teacher", t_m, "heun", n) for n in heun_ns]
        if rk45 and base == "eager":
            plan.append(("teacher", t_m, "rk45", None))
    with torch.no_grad():
        for who, m in (("student", s_m), ("teacher", t_m)):  # one velocity call
            lat = measure_latency(lambda m=m: m(z, t), dev, warmup=suite.warmup, iters=suite.iters)
            rows.append({"model": who, "backend": backend, "solver": "call", "nfe": 1, "flops": suite.flops[who],
                         "params": suite.params[who], **lat.to_dict()})
        for who, m, solver, steps in plan:
            if base == "aoti" and who == "student":  # the package fastflow-run runs too
                fn = suite.artefacts[path].runner("pt2", load_pt2)
            elif base == "onnxruntime" and who == "student":  # the generator ONNX (the sampler inside)
                fn = suite.artefacts["off"].runner("onnx", load_onnx)
            else:
                fn = _sampler(m, base, solver, steps, z)
            if solver == "rk45":
                res = generate(m, z, "rk45", None)
                nfe, calls = float(res.per_sample_nfe().mean()), res.nfe
            else:
                nfe = float(steps if solver == "euler" else 2 * steps - 1)
                calls = int(nfe)
            lat = measure_latency(fn, dev, warmup=1 if solver == "rk45" else suite.warmup,
                                  iters=max(3, suite.iters // 4) if solver == "rk45" else suite.iters)
            rows.append({"model": who, "backend": backend, "solver": solver, "steps": steps, "nfe": nfe,
                         "flops": calls * suite.flops[who], "params": suite.params[who], **lat.to_dict()})
    return rows


def speedup_check(rows: list[dict[str, Any]], backend: str = "eager") -> list[dict[str, Any]]:
    """Measured one-step speedup over teacher Euler-N beside ``N × teacher call / student call`` in
    time (``predicted_speedup``) and in FLOPs (``flops_ratio``): a record, not a pass/fail check."""
    get = lambda m, s, n=None: next(r for r in rows if r["backend"] == backend and r["model"] == m  # noqa: E731
                                    and r["solver"] == s and (n is None or r.get("steps") == n))
    ratio = get("teacher", "call")["p50_ms"] / get("student", "call")["p50_ms"]
    one_row = get("student", "euler", 1)
    one = one_row["p50_ms"]
    out = []
    for r in rows:
        if r["backend"] == backend and r["model"] == "teacher" and r["solver"] == "euler":
            measured = r["p50_ms"] / one
            predicted = r["steps"] * ratio
            out.append({"N": r["steps"], "measured_speedup": measured, "predicted_speedup": predicted,
                        "rel_error": measured / predicted - 1, "flops_ratio": r["flops"] / one_row["flops"]})
    return out


def save_plot(rows: list[dict[str, Any]], path: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for i, backend in enumerate(dict.fromkeys(r["backend"] for r in rows)):
        eul = [r for r in rows if r["backend"] == backend and r["model"] == "teacher" and r["solver"] == "euler"]
        if eul:
            ax.plot([r["nfe"] for r in eul], [r["p50_ms"] for r in eul], "o-", color=f"C{i}",
                    label=f"teacher Euler ({backend})")
        for r in rows:
            if r["backend"] == backend and r["solver"] in ("heun", "rk45"):
                ax.plot([r["nfe"]], [r["p50_ms"]], "s" if r["solver"] == "rk45" else "^", color=f"C{i}")
        one = next(r for r in rows if r["backend"] == backend and r["model"] == "student" and r["solver"] == "euler")
        ax.plot([1], [one["p50_ms"]], "*", ms=14, color=f"C{i}", label=f"one-step student ({backend})")
    ax.set(xscale="log", yscale="log", xlabel="NFE (Heun ▲, RK45 ■)", ylabel="latency p50 (ms)",
           title="one-step student vs multi-step teacher")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
