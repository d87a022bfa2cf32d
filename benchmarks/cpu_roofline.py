"""One-step generators on the CPU against the hardware limit: every backend, fp32 and int8, with its
roofline fields and int8's quality cost (issue 24's measurement).

For each model × batch × thread count, :func:`fastflow.bench.artefacts.generator_row` times the
student's one-step generator on ``BACKENDS`` in ``--rounds`` interleaved sweeps, each after measuring
the fp32 and int8 matrix-multiply rates in the same process (``fastflow.bench.roofline``): on a
shared machine whose speed drifts over minutes, every backend sees the same drift. Models: the
demo's FGD student (trained, from ``--fgd``; its int8 artefacts' digits FD against fp32 on 1000
samples is the quality cost) and a ``slim-15.7m`` student with random weights (time only). Each
thread count also times the :class:`CallFloor` generator (no work, the
student's input and output) on every fp32 backend: that backend's fixed cost per call. Run on an
idle machine::

    python benchmarks/cpu_roofline.py --fgd DEMO/seed-0/student-fgd --out benchmarks/results/cpu-roofline.json
    python benchmarks/cpu_roofline.py --table benchmarks/results/cpu-roofline.json   # the README table
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

BACKENDS = ["eager", "compiled", "onnxruntime", "openvino", "aoti", "native", "aoti-prepack", "native-prepack",
            "aoti-cpuk", "native-cpuk", "onnxruntime-int8", "openvino-int8", "aoti-int8", "native-int8",
            "aoti-cpuk-int8", "native-cpuk-int8"]


class CallFloor(nn.Module):
    r"""A velocity model with (almost) no work, :math:`v(x, t) = t\,x`, so that its one-step generator
    :math:`x_1 = z + (1-\epsilon)\,\epsilon z` takes and returns the student's tensors: timed on a
    backend, it measures that backend's fixed cost per call (binding inputs, allocating the output,
    dispatch) — the floor under every latency of a model of that input and output size. ``shape``:
    one sample's, ``(dim,)`` or square ``(C, H, H)``."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.config = SimpleNamespace(dim=shape[0]) if len(shape) == 1 else \
            SimpleNamespace(in_channels=shape[0], resolution=shape[1])

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return t.view(-1, *[1] * (x.dim() - 1)) * x


def student_rows(name: str, student: torch.nn.Module, shape: tuple[int, ...], batch: int, threads: int,
                 backends: list[str], iters: int, rounds: int) -> list[dict[str, Any]]:
    """The one-step generator's row on every backend, timed in ``rounds`` interleaved sweeps over the
    backends (``iters`` calls per backend in all), each sweep after a measurement of the fp32 and int8
    matrix-multiply rates at the same thread count: a drift of the machine hits every backend alike.
    A row's p50 is the median of its rounds' p50s; its peak the highest rate of the rounds."""
    import tempfile

    from fastflow.bench.artefacts import Artefacts, generator_row
    from fastflow.bench.latency import find_runner, native_latency
    from fastflow.bench.roofline import add_roofline, peaks
    from fastflow.metrics.cost import count_flops, count_params

    torch.set_num_threads(threads)
    z = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    work = Path(tempfile.mkdtemp(prefix="fastflow-roofline-"))
    art = ARTEFACTS.setdefault((name, batch), Artefacts(student, z, work))
    runner = find_runner() if any(b.startswith("native") for b in backends) else None
    per_round = -(-iters // rounds)
    warmup = max(1, min(5, per_round // 2))
    native = lambda pkg: native_latency(runner, pkg, art.z, per_round, warmup, work)  # noqa: E731
    flops, params = count_flops(student, z), count_params(student)
    rates, sweeps = [], []
    for _ in range(rounds):
        # the compiled row compiles afresh: this script's many models and shapes would hit the recompile limit
        torch.compiler.reset()
        rates.append(peaks(torch.device("cpu"), int8=any(b.endswith("int8") for b in backends)))
        sweeps.append([generator_row(art, b, flops, params, per_round, warmup, native) for b in backends])
    peak = {**rates[0], **{k: max(r[k] for r in rates) for k in ("fp32_gflops", "int8_gops") if k in rates[0]}}
    rows = [merge_rounds(list(col)) for col in zip(*sweeps, strict=False)]
    add_roofline(rows, peak)
    return [{**r, "model": name, "batch": batch, "threads": threads, "fp32_peak_gflops": peak["fp32_gflops"],
             "int8_peak_gops": peak.get("int8_gops"), "fp32_peak_rounds_gflops": [r["fp32_gflops"] for r in rates]}
            for r in rows]


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One backend's rows of several rounds as one: p50 the median of the rounds' p50s (each listed in
    ``p50_rounds_ms``), p90/p99 and the deviation from eager the worst, the fastest call the fastest."""
    p50s = [r["p50_ms"] for r in rounds]
    return {**rounds[0], "p50_ms": statistics.median(p50s), "p50_rounds_ms": p50s,
            "p90_ms": max(r["p90_ms"] for r in rounds), "p99_ms": max(r["p99_ms"] for r in rounds),
            "mean_ms": statistics.fmean(r["mean_ms"] for r in rounds), "min_ms": min(r["min_ms"] for r in rounds),
            "calls": sum(r["calls"] for r in rounds),
            "max_abs_vs_eager": max(r["max_abs_vs_eager"] for r in rounds)}


#: (model, batch) → its artefacts, built once for every thread count
ARTEFACTS: dict[tuple[str, int], Any] = {}


def int8_cost(student: torch.nn.Module) -> dict[str, Any]:
    """Digits FD / coverage of each int8 artefact against fp32 on the same 1000 noises (batch 8)."""
    import tempfile

    from fastflow.bench.artefacts import Artefacts
    from fastflow.export.formats import load_onnx, load_openvino, load_pt2
    from fastflow.export.generator import Generator
    from fastflow.export.spec import BatchRange, GeneratorSpec
    from fastflow.export.validate import int8_quality
    from fastflow.metrics import digits_scores

    z = torch.randn(8, 1, 16, 16)
    art = Artefacts(student, z, Path(tempfile.mkdtemp(prefix="fastflow-roofline-")))
    spec = GeneratorSpec("generator", (1, 16, 16), BatchRange(8, 8, 8))
    g = torch.Generator().manual_seed(2024)
    out = {}
    for name, kind, load in (
        ("onnxruntime-int8", "onnx-int8", load_onnx),
        ("openvino-int8", "onnx-int8", load_openvino),
        ("aoti-int8", "pt2-int8", load_pt2),
        ("aoti-cpuk-int8", "pt2-cpuk8", load_pt2),
    ):
        run = load(art.path(kind), torch.device("cpu"))
        g.manual_seed(2024)
        out[name] = int8_quality(Generator(student, 1).eval(), run, spec,
                                 lambda b: (torch.randn(b, 1, 16, 16, generator=g),), scores=digits_scores)
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every row, written to ``args.out`` after each model × batch × thread count (a crash keeps the rows so far)."""
    from fastflow.models import build_model, load_model
    from fastflow.models.presets import sample_shape
    from fastflow.utils.io import atomic_write_json
    from fastflow.utils.threads import device_name

    torch.manual_seed(0)
    models = {} if args.preset == "none" else {
        f"{args.preset} (random)": (build_model({"preset": args.preset}).eval(), args.iters_large)}
    if args.fgd:
        models = {"digits FGD student": (load_model(Path(args.fgd)).eval(), args.iters), **models}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    doc: dict[str, Any] = {"device": device_name(torch.device("cpu")),
                           "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                           "commit": commit or None, "command": " ".join(sys.argv), "rows": [], "call_floor": [],
                           "int8_quality": {}}
    for threads in [] if args.quality_only else args.threads:
        for name, (model, iters) in models.items():
            for batch in args.batch:
                t0 = time.perf_counter()
                doc["rows"] += student_rows(name, model, sample_shape(model), batch, threads, args.backends, iters,
                                            args.rounds)
                atomic_write_json(args.out, doc)
                print(f"{name}, batch {batch}, {threads} thread(s): {time.perf_counter() - t0:.0f}s", flush=True)
        fp32 = [b for b in args.backends if not b.endswith(("int8", "cpuk"))]  # a call floor has no UNet blocks
        shape = sample_shape(next(iter(models.values()))[0])  # the small model's, where overhead dominates
        doc["call_floor"] += student_rows(
            "call floor", CallFloor(shape), shape, 1, threads, fp32, args.iters, args.rounds
        )
        atomic_write_json(args.out, doc)
    torch.set_num_threads(args.threads[0])
    if args.fgd and any(b.endswith("int8") for b in args.backends):
        doc["int8_quality"] = int8_cost(models["digits FGD student"][0])
    return doc


def _timing_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per model, batch and thread count, each backend's p50 and fraction of peak (no rows: none)."""
    if not rows:
        return []
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    lines = ["| model | batch | threads | GFLOP/call | fp32 / int8 peak | " + " | ".join(backends) + " |",
             "|---|---|---|---|---|" + "---|" * len(backends)]
    for key in dict.fromkeys((r["model"], r["batch"], r["threads"]) for r in rows):
        cell = {r["backend"]: r for r in rows if (r["model"], r["batch"], r["threads"]) == key}
        first = next(iter(cell.values()))
        peak = f"{first['fp32_peak_gflops']:.0f} / {first['int8_peak_gops']:.0f}" if first.get("int8_peak_gops") \
            else f"{first['fp32_peak_gflops']:.0f}"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {first['flops'] / 1e9:.3g} | {peak} | " + " | ".join(
            f"{cell[b]['p50_ms']:.3g} ms · {100 * cell[b]['fraction_of_peak']:.0f} %" if b in cell else ""
            for b in backends) + " |")
    return lines


def table(doc: dict[str, Any]) -> str:
    """The README's markdown tables: per model, batch and thread count, each backend's p50 latency and
    fraction of the run's peak (fp32 rows against the fp32 matrix-multiply rate, int8 rows against
    the int8 one); int8's quality cost; each backend's fixed cost per call (the
    :class:`CallFloor` generator)."""
    lines = _timing_table(doc["rows"])
    for name, q in doc.get("int8_quality", {}).items():
        lines.append(
            f"\n{name}: digits FD {q['fd_fp32']:.2f} (fp32) → {q['fd_int8']:.2f} "
            f"({100 * q['fd_rel_change']:+.1f} %), coverage {q['coverage_fp32']:.3f} → {q['coverage_int8']:.3f}, "
            f"max |Δ| {q['max_abs_err']:.3g} on {q['samples']} samples"
        )
    floor = {(r["backend"], r["threads"]): r["p50_ms"] * 1e3 for r in doc.get("call_floor", [])}
    threads = sorted({t for _, t in floor})
    if not floor:
        return "\n".join(lines)
    lines += ["", "| fixed cost per call, p50 µs | " + " | ".join(f"{t} thread(s)" for t in threads) + " |",
              "|---|" + "---|" * len(threads)]
    for b in dict.fromkeys(b for b, _ in floor):
        lines.append(f"| {b} | " + " | ".join(f"{floor[b, t]:.1f}" for t in threads) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from fastflow.cli.argtypes import choice_list, int_list, positive_int

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fgd", default=None, help="the demo's FGD student (checkpoint or run directory)")
    p.add_argument("--batch", type=int_list, default=[1, 8])
    p.add_argument("--threads", type=int_list, default=[1, 2])
    p.add_argument("--backends", type=choice_list(*BACKENDS), default=BACKENDS)
    p.add_argument("--iters", type=positive_int, default=200, help="timed calls per row of the small models")
    p.add_argument(
        "--preset", default="slim-15.7m", help="the random-weight student timed beside --fgd ('none': only --fgd)"
    )
    p.add_argument("--iters-large", type=positive_int, default=20, help="timed calls per row of --preset")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="interleaved sweeps over the backends the calls are split into")
    p.add_argument("--out", default="cpu-roofline.json")
    p.add_argument("--table", default=None, help="print the README table of this JSON and exit")
    p.add_argument("--quality-only", action="store_true", help="int8's quality cost (needs --fgd) without the timings")
    args = p.parse_args(argv)
    if args.quality_only and not args.fgd:
        p.error("--quality-only measures the FGD student's int8 artefacts: add --fgd")
    if args.preset == "none" and not args.fgd:
        p.error("--preset none times only the FGD student: add --fgd")
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    from fastflow.utils.io import atomic_write_json

    doc = measure(args)
    atomic_write_json(args.out, doc)
    print(table(doc))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
