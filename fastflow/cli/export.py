"""``fastflow-export CKPT --format FORMAT -o PATH`` (also ``fastflow export``): build the generator's
artefact, validate it against PyTorch, time it, report. Formats come from one table,
:data:`fastflow.export.formats.FORMATS`.

Exit codes: 0 success, 1 validation failed, 2 bad input or a missing backend (one line).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fastflow.cli.common import (Parser, add_model_args, add_threads, device_name, finite_float, load_checkpoint,
                                 nonneg_float, nonneg_int, positive_int, run_cli)
from fastflow.errors import ConfigError, MissingBackendError
from fastflow.export.formats import FORMATS, BuildOptions

Inputs = Callable[[int], tuple[torch.Tensor, ...]]  # batch size → fixed-seed example inputs


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("fastflow", "onnx", "onnxruntime", "onnxscript", "torch-tensorrt", "tensorrt"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", help="checkpoint directory, or run directory (latest checkpoint)")
    p.add_argument("--format", required=True, choices=list(FORMATS),
                   help="; ".join(f"{name}: {f.help}{' (GPU)' if f.gpu_only else ''}" for name, f in FORMATS.items()))
    p.add_argument("-o", "--output", required=True, help="artefact path (with --pipeline: a new directory)")
    p.add_argument("--pipeline", action="store_true",
                   help="a text-conditioned student as one artefact per component (text_encoder, generator with CFG "
                        "inside, vae_decoder) + pipeline.json in the directory -o (fastflow.export.pipeline)")
    p.add_argument("--cfg", type=finite_float, default=1.0,
                   help="with --pipeline: CFG scale inside the generator (≠ 1: the batch is doubled internally)")
    p.add_argument("--context-length", type=positive_int, default=77,
                   help="with --pipeline, for a fastflow token-conditioned UNet: tokens per prompt")
    p.add_argument("--components", default=None,
                   help="with --pipeline: build only these (comma-separated: text_encoder, generator, vae_decoder)")
    p.add_argument("--iters", type=nonneg_int, default=20,
                   help="timed calls of the artefact (each component with --pipeline) after up to 3 warm-up calls; "
                        "0: no timing")
    p.add_argument("--batch", type=positive_int, default=None, help="static batch size")
    p.add_argument("--min-batch", type=positive_int, default=1, help="smallest batch of a dynamic batch range")
    p.add_argument("--opt-batch", type=positive_int, default=None, help="batch to optimise for (default: max)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="largest batch of a dynamic batch range")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="dtype of weights and inputs")
    p.add_argument("--steps", type=positive_int, default=1, help="Euler steps inside the generator")
    p.add_argument("--opset", type=positive_int, default=19, help="ONNX opset (>= 18)")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file")
    p.add_argument("--opt-level", type=nonneg_int, default=3, help="TensorRT builder optimisation level")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="post-training static int8 (onnx: ONNX Runtime QDQ; pt2: torchao PT2E for x86 oneDNN), "
                        "calibrated on the generator's own inputs; GroupNorm and softmax stay float. The report "
                        "gives the quality cost against fp32 on the same noise (max |Δ|, PSNR; digits FD/coverage "
                        "for 16×16 digit generators)")
    p.add_argument("--prepack", action="store_true",
                   help="pt2 on the CPU: freeze the weights into the package, prepacked for oneDNN (faster "
                        "compute-bound generators, slower tiny ones; int8 packages always are)")
    p.add_argument("--cpu-kernels", action="store_true",
                   help="pt2 on the CPU, fp32: run every UNet ResBlock, the input and output convolutions "
                        "through fastflow's CPU block kernel (GroupNorm + SiLU + resampling + 3×3 convolution + "
                        "embedding + residual per call; fastflow.fused.cpu_block), for small generators at small "
                        "batches; fastflow-run links the kernel")
    p.add_argument("--calibrate", type=positive_int, default=None,
                   help="samples drawn for int8 calibration (default 256; with --quantize)")
    p.add_argument("--validate", action="store_true", help="compare with PyTorch on fixed-seed inputs")
    p.add_argument("--atol", type=nonneg_float, default=1e-4, help="validation's absolute tolerance")
    p.add_argument("--rtol", type=nonneg_float, default=1e-3, help="validation's relative tolerance")
    p.add_argument("--report", default=None, help="write a JSON report here")
    add_model_args(p, fused_extra=". pt2/ep keep the kernels (on CUDA compiled into the package; under the "
                   "interpreter the package calls fastflow's registered ops); onnx/engine/trt-pt2 keep the PyTorch "
                   "reference decomposition. The report and the package metadata record which (fastflow.fused)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the validation and timing inputs")
    add_threads(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a generator (the same as fastflow-export)")
    add_arguments(p)
    p.set_defaults(fn=run)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fastflow-export", description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


def _check_args(args: argparse.Namespace) -> tuple[int, int, int]:
    """The batch range; refuses what cannot be built here before anything is loaded."""
    from fastflow.export.formats import TRT_HINT
    from fastflow.utils.io import check_writable

    if args.batch is not None:
        lo, opt, hi = args.batch, args.batch, args.batch
    else:
        lo, opt, hi = args.min_batch, args.opt_batch or args.max_batch, args.max_batch
    if not 1 <= lo <= opt <= hi:
        raise ConfigError("need 1 <= min-batch <= opt-batch <= max-batch")
    if args.opset < 18:
        raise ConfigError("--opset must be >= 18 (GroupNormalization, dynamo exporter)")
    if FORMATS[args.format].gpu_only and not torch.cuda.is_available():  # fail fast
        raise MissingBackendError(f"--format {args.format} needs an NVIDIA GPU with CUDA and TensorRT "
                                  f"({TRT_HINT}); use --format onnx or pt2 here")
    if args.quantize:
        from fastflow.export.quantize import check_quantize

        check_quantize(args.format, args.dtype, args.device)
        if args.fused == "on":
            raise ConfigError("--quantize int8 keeps the reference ops: drop --fused on")
    elif args.calibrate is not None:
        raise ConfigError("--calibrate sets the int8 calibration: add --quantize int8")
    if args.prepack and (args.format != "pt2" or args.device.type != "cpu"):
        raise ConfigError("--prepack packs weights for oneDNN on the CPU: use it with --format pt2 --device cpu")
    if args.cpu_kernels and (args.format != "pt2" or args.device.type != "cpu" or args.dtype != "fp32"):
        raise ConfigError("--cpu-kernels is the fp32 CPU block kernel: use it with --format pt2 --device cpu "
                          "--dtype fp32")
    if args.cpu_kernels and (args.quantize or args.prepack or args.fused == "on"):
        raise ConfigError("--cpu-kernels replaces the convolutions --quantize/--prepack/--fused on would change: "
                          "use one")
    if args.pipeline and (args.quantize or args.prepack or args.cpu_kernels):
        flag = "quantize int8" if args.quantize else "prepack" if args.prepack else "cpu-kernels"
        raise ConfigError(f"--{flag} applies to single-file generators; drop it with --pipeline")
    if not args.pipeline and (args.cfg != 1.0 or args.components):
        raise ConfigError("--cfg and --components are --pipeline settings: add --pipeline")
    if args.pipeline:
        from fastflow.utils.io import check_new_dir

        check_new_dir(args.output)
    else:
        check_writable(args.output)  # before minutes of compilation
    if args.report:
        check_writable(args.report)
    from fastflow.utils.io import check_distinct

    check_distinct({"-o": args.output, "--report": args.report}, {"CHECKPOINT": args.ckpt})
    return lo, opt, hi


def _fused_path(args: argparse.Namespace, model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The model to export and what it carries (``fastflow.fused``): ``triton`` (kernels compiled
    into the package, CUDA), ``op`` (calls the registered fastflow ops: the interpreter, or an ``ep``)
    ``off`` (the reference decomposition: ``--fused off``, or a format that cannot keep kernels), or
    ``cpu`` (``--cpu-kernels``: the CPU block kernel, ``fastflow.fused.cpu_block``)."""
    from fastflow.fused import apply, decide
    from fastflow.fused.cpu_block import swap_cpu_blocks

    if args.cpu_kernels:
        fused = copy.deepcopy(model)
        if not swap_cpu_blocks(fused).swapped:
            raise ConfigError("--cpu-kernels: this model has no fastflow UNet blocks to put the kernel into")
        return fused, "cpu"
    fused = copy.deepcopy(model) if decide(args.fused, args.device)[0] else model
    if not apply(fused, args.fused, args.device).active:
        return model, "off"
    if not FORMATS[args.format].kernels:
        print(f"note: --format {args.format} keeps the PyTorch reference decomposition of the fused ops")
        return model, "off"
    return fused, "triton" if args.device.type == "cuda" and args.format == "pt2" else "op"


def _generator(args: argparse.Namespace, batch: tuple[int, int, int]) -> tuple[Path, Any, Any, Any, Inputs]:
    """The checkpoint, the generator to export, the unfused eager generator (the reference of
    validation), the spec, and example inputs by batch size."""
    from fastflow.export.generator import Generator, SRGenerator
    from fastflow.export.spec import DTYPES, BatchRange, GeneratorSpec
    from fastflow.models.checkpoint import weights_source
    from fastflow.models.presets import sample_shape

    record, model = load_checkpoint(args, fused=False)
    if record.kind == "token":
        raise ConfigError("a token-conditioned generator exports as a pipeline: add --pipeline")
    dtype, device, shape = DTYPES[args.dtype], args.device, sample_shape(model)
    exported, fused = _fused_path(args, model)
    if record.kind == "image":  # an OFTSR student: (lq, noise, tau) → image
        if not record.oftsr_student:
            raise ConfigError(f"{record.path}: image-conditioned models export only as OFTSR students")
        wrap, kind, extra = (lambda m: SRGenerator(m, record.sigma_p)), "sr", {"sigma_p": repr(record.sigma_p)}
    else:
        wrap = lambda m: Generator(m, args.steps)  # noqa: E731
        kind, extra = ("conditional" if record.num_classes else "generator"), {}
    _, digest = weights_source(record.path, args.weights)  # verified by the load above
    spec = GeneratorSpec(kind=kind, sample_shape=tuple(shape), batch=BatchRange(*batch), dtype=args.dtype,
                         steps=1 if kind == "sr" else args.steps, num_classes=record.num_classes,
                         device=device.type, checkpoint_sha256=digest,
                         extra={**extra, "fused": fused})
    g = torch.Generator().manual_seed(args.seed)

    def inputs_for(b: int) -> tuple[torch.Tensor, ...]:
        z = torch.randn(b, *shape, generator=g).to(device=device, dtype=dtype)
        if kind == "sr":
            lq = (torch.rand(b, *shape, generator=g) * 2 - 1).to(device=device, dtype=dtype)
            return lq, z, torch.rand(b, generator=g).to(device)
        if not record.num_classes:
            return (z,)
        return z, torch.randint(0, record.num_classes, (b,), generator=g).to(device)

    gens = [wrap(m).to(device=device, dtype=dtype).eval() for m in (exported, model)]
    return record.path, gens[0], gens[1], spec, inputs_for


def run(args: argparse.Namespace) -> int:
    from fastflow.export.formats import input_names
    from fastflow.fused.runtime import kernels_in_export
    from fastflow.utils.io import disk_errors, staged_artifact

    batch = _check_args(args)
    if args.pipeline:
        return _run_pipeline(args, batch)
    out = Path(args.output)
    ckpt, gen, reference, spec, inputs_for = _generator(args, batch)
    example = inputs_for(spec.batch.opt)
    calibration: tuple = ()
    if args.quantize:
        from fastflow.export.quantize import DEFAULT_CALIBRATION, calibration_inputs

        samples = args.calibrate or DEFAULT_CALIBRATION
        calibration = tuple(calibration_inputs(inputs_for, samples, spec.batch.max))
        spec.extra.update(quantize=args.quantize, calibration_samples=str(samples))
    if args.prepack:
        spec.extra["prepack"] = "on"
    keep = kernels_in_export() if spec.extra["fused"] != "off" else contextlib.nullcontext()
    t0 = time.perf_counter()
    with staged_artifact(out) as staged, torch.no_grad(), keep, disk_errors(out):
        FORMATS[args.format].build(gen, example, spec, staged, BuildOptions(args.opset, args.opt_level,
                                                                            args.timing_cache, calibration))
    build_s = time.perf_counter() - t0
    print(f"built {out} ({out.stat().st_size / 1e6:.2f} MB) in {build_s:.1f}s")
    report: dict[str, Any] = {
        "checkpoint": str(ckpt), "format": args.format, "artifact": str(out),
        "artifact_bytes": out.stat().st_size, "build_seconds": build_s, "versions": _versions(),
        "device": device_name(args.device),
        "settings": {"dtype": args.dtype, "steps": args.steps, "batch": vars(spec.batch),
                     "opset": args.opset if args.format == "onnx" else None,
                     "opt_level": args.opt_level if FORMATS[args.format].gpu_only else None,
                     "timing_cache": args.timing_cache, "weights": args.weights, "seed": args.seed,
                     "fused": spec.extra["fused"], "quantize": args.quantize,
                     "prepack": spec.extra.get("prepack") == "on"},
        "sample_shape": list(spec.sample_shape), "inputs": input_names(gen, example), "spec": spec.to_dict(),
    }
    return _validate_and_time(args, reference, spec, inputs_for, example, report)


def _names(components: str | None) -> tuple[str, ...] | None:
    from fastflow.export.pipeline import CHAIN

    if components is None:
        return None
    names = tuple(n.strip() for n in components.split(",") if n.strip())
    unknown = [n for n in names if n not in CHAIN]
    if unknown or not names:
        raise ConfigError(f"--components takes {', '.join(CHAIN)} (comma-separated), got {components!r}")
    return names


def _run_pipeline(args: argparse.Namespace, batch: tuple[int, int, int]) -> int:
    """``--pipeline``: one artefact per component of a text student, validated and timed each."""
    from fastflow.export.pipeline import components, export_pipeline, load_pipeline, validate_pipeline
    from fastflow.fused.runtime import kernels_in_export
    from fastflow.export.spec import BatchRange, GeneratorSpec
    from fastflow.models.checkpoint import weights_source
    from fastflow.models.presets import sample_shape
    from fastflow.utils.io import atomic_write_json

    record, model = load_checkpoint(args, fused=False)
    if record.kind != "token" and getattr(model, "table", None) is None:
        raise ConfigError(f"--pipeline exports text-conditioned students (a diffusers text model with a prompt table, "
                          f"or a token-conditioned UNet); this one is {record.kind}: export it without --pipeline")
    exported, fused = _fused_path(args, model)
    _, digest = weights_source(record.path, args.weights)
    spec = GeneratorSpec(kind="generator", sample_shape=tuple(sample_shape(model)), batch=BatchRange(*batch),
                         dtype=args.dtype, steps=args.steps, device=args.device.type, checkpoint_sha256=digest,
                         extra={"fused": fused, "cfg_scale": repr(args.cfg)})
    comps = components(exported, spec, args.cfg, args.context_length, args.seed, _names(args.components))
    source = Path(model.config.path).expanduser() if record.arch == "sd" else None
    keep = kernels_in_export() if fused != "off" else contextlib.nullcontext()
    t0 = time.perf_counter()
    with keep:
        manifest = export_pipeline(comps, args.output, args.format, BuildOptions(args.opset, args.opt_level,
                                                                                 args.timing_cache), source,
                                   {"checkpoint": str(record.path), "checkpoint_sha256": digest, "steps": args.steps,
                                    "cfg_scale": args.cfg, "dtype": args.dtype, "device": device_name(args.device),
                                    "fused": fused, "versions": _versions()})
    out = Path(args.output)
    sizes = {f.name: f.stat().st_size for f in sorted(out.iterdir()) if f.is_file()}
    report: dict[str, Any] = {**manifest, "build_seconds": time.perf_counter() - t0, "file_bytes": sizes}
    print(f"built {out}: {', '.join(manifest['chain'])} ({sum(sizes.values()) / 1e6:.2f} MB) "
          f"in {report['build_seconds']:.1f}s")
    status = 0
    if args.validate:
        report["validation"] = val = validate_pipeline(comps, out, args.device, args.atol, args.rtol)
        for name in [n for n in (*manifest["chain"], "chain") if n in val]:
            v = val[name]
            verdict = "passed" if v["passed"] else "FAILED"
            print(f"validation {name}: {verdict}, max abs {v.get('max_abs_err', float('nan')):.3g}")
        status = 0 if val["passed"] else 1
    runners = load_pipeline(out, args.device) if args.iters else {}
    report["latency_ms"] = {c.name: _latency(args, runners[c.name], c.inputs_for(c.spec.batch.opt), c.name)
                            for c in comps if args.iters}
    if args.report:
        atomic_write_json(args.report, report)
        print(f"wrote {args.report}")
    return status


def _latency(args: argparse.Namespace, runner: Any, example: tuple[torch.Tensor, ...], what: str = "") -> dict:
    """``--iters`` timed calls of ``runner`` on ``example`` after up to 3 warm-up calls, printed and returned."""
    from fastflow.utils.timing import measure_latency

    lat = measure_latency(lambda: runner(*example), args.device, warmup=min(3, args.iters), iters=args.iters)
    print(f"latency{' ' + what if what else ''} at batch {len(example[0])}: p50 {lat.p50_ms:.2f} ms, "
          f"p90 {lat.p90_ms:.2f} ms, p99 {lat.p99_ms:.2f} ms")
    return {"batch": len(example[0]), **lat.to_dict()}


def _validate_and_time(args: argparse.Namespace, gen: torch.nn.Module, spec: Any, inputs_for: Inputs,
                       example: tuple[torch.Tensor, ...], report: dict[str, Any]) -> int:
    from fastflow.export.validate import compare
    from fastflow.utils.io import atomic_write_json

    runner = FORMATS[args.format].load(Path(args.output), args.device)
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
    if args.quantize:
        from fastflow.export.validate import int8_quality
        from fastflow.metrics import digits_scores

        digits = spec.kind in ("generator", "conditional") and tuple(spec.sample_shape) == (1, 16, 16)
        report["int8"] = q = int8_quality(gen, runner, spec, inputs_for, scores=digits_scores if digits else None)
        print(f"int8 vs fp32 on {q['samples']} samples: max |Δ| {q['max_abs_err']:.3g}, PSNR {q['psnr_db']:.1f} dB"
              + (f", digits FD {q['fd_fp32']:.2f} → {q['fd_int8']:.2f} ({100 * q['fd_rel_change']:+.1f} %)"
                 if "fd_int8" in q else ""))
    if args.iters:
        report["latency_ms"] = _latency(args, runner, example)
    if args.report:
        atomic_write_json(args.report, report)
        print(f"wrote {args.report}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("fastflow-export", run, args)


if __name__ == "__main__":
    sys.exit(main())
