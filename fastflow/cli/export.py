"""``fastflow-export CKPT --format {onnx,pt2,ep,engine,trt-pt2} -o PATH``: build, validate, report.

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

from fastflow.cli.common import (Parser, add_threads, default_device, device_arg, nonneg_float, nonneg_int,
                                 positive_int, run_cli)
from fastflow.errors import ConfigError, MissingBackendError
from fastflow.flow.sr import DEFAULT_SIGMA_P


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
    p = Parser(prog="fastflow-export", description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="checkpoint directory, or run directory (latest checkpoint)")
    p.add_argument("--format", required=True, choices=["onnx", "pt2", "ep", "engine", "trt-pt2"],
                   help="engine: serialized TensorRT plan (+ PATH.json); trt-pt2: TensorRT inside a .pt2")
    p.add_argument("-o", "--output", required=True, help="artefact path")
    p.add_argument("--batch", type=positive_int, default=None, help="static batch size")
    p.add_argument("--min-batch", type=positive_int, default=1)
    p.add_argument("--opt-batch", type=positive_int, default=None)
    p.add_argument("--max-batch", type=positive_int, default=8)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--steps", type=positive_int, default=1, help="Euler steps inside the generator")
    p.add_argument("--opset", type=positive_int, default=19)
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file")
    p.add_argument("--opt-level", type=nonneg_int, default=3, help="TensorRT builder optimisation level")
    p.add_argument("--validate", action="store_true", help="compare with PyTorch on fixed-seed inputs")
    p.add_argument("--atol", type=nonneg_float, default=1e-4)
    p.add_argument("--rtol", type=nonneg_float, default=1e-3)
    p.add_argument("--report", default=None, help="write a JSON report here")
    p.add_argument("--weights", default="ema", choices=["ema", "model"])
    p.add_argument("--device", type=device_arg, default=default_device())
    p.add_argument("--seed", type=nonneg_int, default=0)
    add_threads(p)
    return p


def run(args: argparse.Namespace) -> int:
    from fastflow.utils.timing import measure_latency
    from fastflow.export import formats
    from fastflow.export.generator import Generator, SRGenerator
    from fastflow.export.spec import DTYPES, BatchRange, GeneratorSpec
    from fastflow.export.validate import compare
    from fastflow.models.checkpoint import load_model, read_config, resolve_checkpoint, weights_file
    from fastflow.models.presets import sample_shape
    from fastflow.utils.io import atomic_write_json, check_writable, file_digest

    if args.batch is not None:
        lo, opt, hi = args.batch, args.batch, args.batch
    else:
        lo, opt, hi = args.min_batch, args.opt_batch or args.max_batch, args.max_batch
    if not 1 <= lo <= opt <= hi:
        raise ConfigError("need 1 <= min-batch <= opt-batch <= max-batch")
    if args.opset < 18:
        raise ConfigError("--opset must be >= 18 (GroupNormalization, dynamo exporter)")
    device = args.device
    dtype = DTYPES[args.dtype]
    if args.format in ("engine", "trt-pt2") and not torch.cuda.is_available():  # fail fast
        raise MissingBackendError(f"--format {args.format} needs an NVIDIA GPU with CUDA and TensorRT "
                                  f"({formats.TRT_HINT}); use --format onnx or pt2 here")
    out = Path(args.output)
    check_writable(out)  # before minutes of compilation
    if args.report:
        check_writable(args.report)
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
        sigma_p = float(objective.get("sigma_p", DEFAULT_SIGMA_P))
        gen = SRGenerator(model, sigma_p).to(device=device, dtype=dtype).eval()
        kind, extra = "sr", {"sigma_p": repr(sigma_p)}
    else:
        gen = Generator(model, args.steps).to(device=device, dtype=dtype).eval()
        kind, extra = ("conditional" if num_classes else "generator"), {}
    spec = GeneratorSpec(kind=kind, sample_shape=tuple(shape), batch=BatchRange(lo, opt, hi), dtype=args.dtype,
                         steps=1 if kind == "sr" else args.steps, num_classes=num_classes, device=device.type,
                         checkpoint_sha256=file_digest(weights_file(ckpt, args.weights)), extra=extra)

    def inputs_for(b: int) -> tuple[torch.Tensor, ...]:
        z = torch.randn(b, *shape, generator=g).to(device=device, dtype=dtype)
        if kind == "sr":
            lq = (torch.rand(b, *shape, generator=g) * 2 - 1).to(device=device, dtype=dtype)
            return lq, z, torch.rand(b, generator=g).to(device)
        if not num_classes:
            return (z,)
        return z, torch.randint(0, num_classes, (b,), generator=g).to(device)

    example = inputs_for(spec.batch.opt)
    t0 = time.perf_counter()
    with torch.no_grad():
        if args.format == "onnx":
            formats.build_onnx(gen, example, spec.batch, out, args.opset, args.dtype)
        elif args.format == "ep":
            formats.build_ep(gen, example, spec.batch, out)
        elif args.format == "pt2":
            formats.build_pt2(gen, example, spec, out)
        elif args.format == "engine":
            formats.build_engine(gen, example, spec, out, args.opt_level, args.timing_cache)
        else:
            formats.build_trt_pt2(gen, example, spec, out, args.opt_level, args.timing_cache)
    build_s = time.perf_counter() - t0
    print(f"built {out} ({out.stat().st_size / 1e6:.2f} MB) in {build_s:.1f}s")

    report: dict[str, Any] = {
        "checkpoint": str(ckpt), "format": args.format, "artifact": str(out),
        "artifact_bytes": out.stat().st_size, "build_seconds": build_s, "versions": _versions(),
        "device": _device_name(device),
        "settings": {"dtype": args.dtype, "steps": args.steps, "batch": vars(spec.batch),
                     "opset": args.opset if args.format == "onnx" else None,
                     "opt_level": args.opt_level if args.format in ("engine", "trt-pt2") else None,
                     "timing_cache": args.timing_cache, "weights": args.weights, "seed": args.seed},
        "sample_shape": list(shape), "inputs": formats.input_names(gen, example), "spec": spec.to_dict(),
    }
    runner = formats.LOADERS[args.format](out, device)
    status = 0
    if args.validate:
        sizes = sorted({spec.batch.min, spec.batch.opt, spec.batch.max})
        val = compare(gen, runner, [inputs_for(b) for b in sizes], args.atol, args.rtol)
        report["validation"] = val
        verdict = "passed" if val["passed"] else "FAILED"
        print(f"validation {verdict}: max abs {val.get('max_abs_err', float('nan')):.3g}, mean abs "
              f"{val.get('mean_abs_err', float('nan')):.3g}, max rel {val.get('max_rel_err', float('nan')):.3g}, "
              f"NaN/Inf {val.get('nan_inf_count', 0)} (atol {args.atol}, rtol {args.rtol}, batches {sizes})")
        status = 0 if val["passed"] else 1
    lat = measure_latency(lambda: runner(*example), device, warmup=3, iters=20)
    report["latency_ms"] = {"batch": spec.batch.opt, **lat.to_dict()}
    print(f"latency at batch {spec.batch.opt}: p50 {lat.p50_ms:.2f} ms, p90 {lat.p90_ms:.2f} ms, "
          f"p99 {lat.p99_ms:.2f} ms")
    if args.report:
        atomic_write_json(args.report, report)
        print(f"wrote {args.report}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("fastflow-export", run, args)


if __name__ == "__main__":
    sys.exit(main())
