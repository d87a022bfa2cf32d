"""``fastflow-export CKPT --format {onnx,pt2,ep,engine} -o PATH``: build, validate, report.

Exit codes: 0 success, 1 validation failed, 2 bad input or a missing backend (one line).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fastflow.errors import ConfigError, FastflowError, MissingBackendError


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("fastflow", "onnx", "onnxruntime", "onnxscript", "torch-tensorrt", "tensorrt"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastflow-export", description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="checkpoint directory, or run directory (latest checkpoint)")
    p.add_argument("--format", required=True, choices=["onnx", "pt2", "ep", "engine"])
    p.add_argument("-o", "--output", required=True, help="artefact path")
    p.add_argument("--batch", type=int, default=None, help="static batch size")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=None)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--steps", type=int, default=1, help="Euler steps inside the generator")
    p.add_argument("--opset", type=int, default=19)
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file")
    p.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimisation level")
    p.add_argument("--validate", action="store_true", help="compare with PyTorch on fixed-seed inputs")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--report", default=None, help="write a JSON report here")
    p.add_argument("--weights", default="ema", choices=["ema", "model"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> int:
    from fastflow.bench.timing import measure_latency
    from fastflow.export import formats
    from fastflow.export.generator import Generator, SRGenerator
    from fastflow.export.validate import compare
    from fastflow.models.presets import sample_shape
    from fastflow.models.checkpoint import load_model, read_config, resolve_checkpoint
    from fastflow.utils.io import atomic_write_json

    if args.batch is not None:
        batch = formats.BatchRange(args.batch, args.batch, args.batch)
    else:
        batch = formats.BatchRange(args.min_batch, args.opt_batch or args.max_batch, args.max_batch)
    if not 1 <= batch.min <= batch.opt <= batch.max:
        raise ConfigError("need 1 <= min-batch <= opt-batch <= max-batch")
    if args.steps < 1:
        raise ConfigError("--steps must be >= 1")
    if args.opset < 18:
        raise ConfigError("--opset must be >= 18 (GroupNormalization, dynamo exporter)")
    device = torch.device(args.device)
    dtype = formats.DTYPES[args.dtype]
    if args.format == "engine":  # fail fast, before loading anything
        if not torch.cuda.is_available():
            raise MissingBackendError("--format engine needs an NVIDIA GPU with CUDA and TensorRT "
                                              "(pip install 'fastflow[tensorrt]'); use --format onnx or pt2 here")
    ckpt = resolve_checkpoint(args.ckpt)
    model = load_model(ckpt, weights=args.weights, device=device)
    if getattr(model.config, "context_dim", 0):
        raise ConfigError("exporting token-conditioned generators is not supported yet")
    num_classes = getattr(model.config, "num_classes", 0)
    shape = sample_shape(model)
    g = torch.Generator().manual_seed(args.seed)
    if getattr(model.config, "cond_channels", 0):  # an OFTSR student: (lq, noise, tau) → image
        objective = read_config(ckpt).get("meta", {}).get("objective_config") or {}
        if objective.get("name") != "oftsr":
            raise ConfigError(f"{ckpt}: image-conditioned models export only as OFTSR students")
        gen = SRGenerator(model, float(objective.get("sigma_p", 0.1))).to(device=device, dtype=dtype).eval()
    else:
        gen = Generator(model, args.steps).to(device=device, dtype=dtype).eval()

    def inputs_for(b: int) -> tuple[torch.Tensor, ...]:
        z = torch.randn(b, *shape, generator=g).to(device=device, dtype=dtype)
        if isinstance(gen, SRGenerator):
            lq = (torch.rand(b, *shape, generator=g) * 2 - 1).to(device=device, dtype=dtype)
            return lq, z, torch.rand(b, generator=g).to(device)
        if not num_classes:
            return (z,)
        return z, torch.randint(0, num_classes, (b,), generator=g).to(device)

    example = inputs_for(batch.opt)

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        if args.format == "onnx":
            formats.build_onnx(gen, example, batch, out, args.opset, args.dtype)
        elif args.format == "ep":
            formats.build_ep(gen, example, batch, out)
        elif args.format == "pt2":
            formats.build_pt2(gen, example, batch, out)
        else:
            formats.build_engine(gen, example, batch, out, args.dtype, args.opt_level, args.timing_cache)
    build_s = time.perf_counter() - t0
    print(f"built {out} ({out.stat().st_size / 1e6:.2f} MB) in {build_s:.1f}s")

    report: dict[str, Any] = {
        "checkpoint": str(ckpt), "format": args.format, "artifact": str(out),
        "artifact_bytes": out.stat().st_size, "build_seconds": build_s, "versions": _versions(),
        "device": _device_name(device),
        "settings": {"dtype": args.dtype, "steps": args.steps, "batch": vars(batch),
                     "opset": args.opset if args.format == "onnx" else None,
                     "opt_level": args.opt_level if args.format == "engine" else None,
                     "timing_cache": args.timing_cache, "weights": args.weights, "seed": args.seed},
        "sample_shape": list(shape), "inputs": formats.input_names(gen, example),
    }
    runner = formats.LOADERS[args.format](out, device)
    status = 0
    if args.validate:
        sizes = sorted({batch.min, batch.opt, batch.max})
        val = compare(gen, runner, [inputs_for(b) for b in sizes], args.atol, args.rtol)
        report["validation"] = val
        verdict = "passed" if val["passed"] else "FAILED"
        print(f"validation {verdict}: max abs {val.get('max_abs_err', float('nan')):.3g}, mean abs "
              f"{val.get('mean_abs_err', float('nan')):.3g}, max rel {val.get('max_rel_err', float('nan')):.3g}, "
              f"NaN/Inf {val.get('nan_inf_count', 0)} (atol {args.atol}, rtol {args.rtol}, batches {sizes})")
        status = 0 if val["passed"] else 1
    lat = measure_latency(lambda: runner(*example), device, warmup=3, iters=20)
    report["latency_ms"] = {"batch": batch.opt, **lat.to_dict()}
    print(f"latency at batch {batch.opt}: p50 {lat.p50_ms:.2f} ms, p90 {lat.p90_ms:.2f} ms, "
          f"p99 {lat.p99_ms:.2f} ms")
    if args.report:
        atomic_write_json(args.report, report)
        print(f"wrote {args.report}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except FastflowError as e:
        print(f"fastflow-export: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
