"""``fastflow-export CKPT --format FORMAT -o PATH`` (also ``fastflow export``): parse the flags into
:class:`~fastflow.export.options.ExportOptions` and call :func:`fastflow.export.export_checkpoint`,
which builds the generator's artefact, checks it against its contract, validates it against PyTorch,
times it and reports (formats: :data:`fastflow.export.formats.FORMATS`).

Exit codes: 0 success, 1 validation failed, 2 bad input or a missing backend (one line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fastflow.cli.argtypes import finite_float, nonneg_float, nonneg_int, positive_int
from fastflow.cli.common import Parser, add_model_args, add_threads, add_version, run_cli
from fastflow.export.formats import FORMATS
from fastflow.export.options import CHAIN
from fastflow.utils.dtypes import DTYPES

DESCRIPTION = ("Export a checkpoint's generator (or a text-to-image pipeline, one artefact per component): build "
               "the artefact, check it against its contract, optionally validate it against PyTorch, time it and "
               "report. Exit 0 success, 1 validation failed, 2 bad input or a missing backend.")


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
    p.add_argument("--components", default=None, type=_components,
                   help="with --pipeline: build only these (comma-separated: text_encoder, generator, vae_decoder)")
    p.add_argument("--iters", type=nonneg_int, default=20,
                   help="timed calls of the artefact (each component with --pipeline) after up to 3 warm-up calls; "
                        "0: no timing")
    p.add_argument("--batch", type=positive_int, default=None, help="static batch size")
    p.add_argument("--min-batch", type=positive_int, default=1, help="smallest batch of a dynamic batch range")
    p.add_argument("--opt-batch", type=positive_int, default=None, help="batch to optimise for (default: max)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="largest batch of a dynamic batch range")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="dtype of weights and inputs")
    p.add_argument("--steps", type=positive_int, default=1, help="Euler steps inside the generator")
    p.add_argument("--opset", type=positive_int, default=19, help="ONNX opset (>= 18)")
    p.add_argument("--external-data", action="store_true",
                   help="onnx: weights in OUTPUT.data beside the graph (which then must travel with it); without it "
                        "the graph is one self-contained file unless it is past ONNX's 2 GiB limit")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file")
    p.add_argument("--opt-level", type=nonneg_int, default=3, help="TensorRT builder optimisation level")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="post-training int8 (onnx: ONNX Runtime QDQ; pt2: torchao PT2E for x86 oneDNN, both "
                        "calibrated on the generator's own inputs; pt2 where --fused picks cpu: the int8 CPU block "
                        "kernel, each call over its own range); GroupNorm and softmax stay float. The report "
                        "gives the quality cost against fp32 on the same noise (max |Δ|, PSNR; digits FD/coverage "
                        "for 16×16 digit generators)")
    p.add_argument("--prepack", action="store_true",
                   help="pt2 on the CPU: freeze the weights into the package, prepacked for oneDNN (faster "
                        "compute-bound generators, slower tiny ones; int8 packages always are)")
    p.add_argument("--velocity", action="store_true",
                   help="export the velocity field (x, t) → v of an unconditional model instead of the generator, "
                        "for a sampler of one's own (Python loaders; fastflow-run runs generators)")
    p.add_argument("--calibrate", type=positive_int, default=None,
                   help="samples drawn for int8 calibration (default 256; with --quantize)")
    p.add_argument("--validate", action="store_true", help="compare with PyTorch on fixed-seed inputs")
    p.add_argument("--atol", type=nonneg_float, default=1e-4, help="validation's absolute tolerance")
    p.add_argument("--rtol", type=nonneg_float, default=1e-3, help="validation's relative tolerance")
    p.add_argument("--report", default=None, help="write a JSON report here")
    add_model_args(p, fused_extra=". pt2/ep keep the Triton kernels (on CUDA compiled into the package; under "
                   "the interpreter the package calls fastflow's registered ops); onnx/engine/trt-pt2 keep the "
                   "PyTorch reference decomposition. cpu: pt2 on the CPU, fp32 — every UNet ResBlock and the input "
                   "and output convolutions through the CPU block kernel, which fastflow-run links. The report and "
                   "the package metadata record which (fastflow.fused)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the validation and timing inputs")
    add_threads(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a generator (the same as fastflow-export)")
    add_arguments(p)
    p.set_defaults(fn=run)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fastflow-export", description=DESCRIPTION)
    add_version(p)
    add_arguments(p)
    return p


def _components(text: str) -> tuple[str, ...]:
    """``--components``: a comma-separated subset of the pipeline's chain."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or any(n not in CHAIN for n in names):
        raise argparse.ArgumentTypeError(f"takes {', '.join(CHAIN)} (comma-separated), got {text!r}")
    return names


def options(args: argparse.Namespace):  # noqa: ANN201 - ExportOptions (imported lazily: torch-heavy)
    """The parsed flags as :class:`~fastflow.export.options.ExportOptions`."""
    from fastflow.errors import ConfigError
    from fastflow.export.options import ExportOptions
    from fastflow.export.spec import BatchRange

    if args.batch is not None:
        lo, opt, hi = args.batch, args.batch, args.batch
    else:
        lo, opt, hi = args.min_batch, args.opt_batch or args.max_batch, args.max_batch
    if not 1 <= lo <= opt <= hi:
        raise ConfigError("need 1 <= min-batch <= opt-batch <= max-batch")
    return ExportOptions(
        format=args.format, output=args.output, batch=BatchRange(lo, opt, hi), dtype=args.dtype, steps=args.steps,
        device=args.device, weights=args.weights, fused=args.fused, prepack=args.prepack, quantize=args.quantize or "",
        calibrate=args.calibrate or 0, velocity=args.velocity, pipeline=args.pipeline, cfg=args.cfg,
        components=args.components, context_length=args.context_length, validate=args.validate, atol=args.atol,
        rtol=args.rtol, iters=args.iters, seed=args.seed, opset=args.opset, opt_level=args.opt_level,
        timing_cache=args.timing_cache, report=args.report, external_data=args.external_data)


def _digits_scores(images):  # noqa: ANN001, ANN202 - Tensor → dict | None
    """The digits FD and coverage of 16×16 one-channel generators (int8's quality report); None otherwise."""
    from fastflow.metrics import digits_scores

    return digits_scores(images) if tuple(images.shape[1:]) == (1, 16, 16) else None


def run(args: argparse.Namespace) -> int:
    from fastflow.export import export_checkpoint

    result = export_checkpoint(args.ckpt, options(args), scores=_digits_scores)
    return 0 if result.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("fastflow-export", run, args)


if __name__ == "__main__":
    sys.exit(main())
