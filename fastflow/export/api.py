"""``export_checkpoint(source, options) → ExportResult``: the one way an artefact is made — by
``fastflow-export``, the benches and the recipes alike.

``source`` is a checkpoint or run directory, or a model in memory (no checkpoint digest). Steps:
load the model as built; put the kernels the options ask for into a copy
(:func:`fastflow.fused.apply`; a format that cannot keep them exports the reference ops); wrap it
as the generator (or SR generator, velocity field, text pipeline); make the
:class:`~fastflow.export.spec.GeneratorSpec` once from the options; build into a staged path, check
the artefact against that contract (:mod:`~fastflow.export.contract`), rename it into place;
then, as asked, validate against eager, report int8's quality cost, time it and write the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.errors import ConfigError
from fastflow.export.contract import check_artefact
from fastflow.export.formats import FORMATS, BuildOptions, input_names
from fastflow.export.generator import Generator, SRGenerator, Velocity
from fastflow.export.options import ExportOptions, ExportResult
from fastflow.export.pipeline import export_text_pipeline
from fastflow.export.quantize import DEFAULT_CALIBRATION, calibration_inputs
from fastflow.export.spec import GeneratorSpec
from fastflow.export.steps import Say, kernel_model, latency, versions
from fastflow.export.validate import compare, int8_quality
from fastflow.flow.sample import is_two_time
from fastflow.fused import is_swapped
from fastflow.models.checkpoint import load_model, read_record, weights_source
from fastflow.models.presets import model_kind, sample_shape
from fastflow.utils.dtypes import DTYPES
from fastflow.utils.io import (
    atomic_write_json,
    check_distinct,
    check_new_dir,
    check_writable,
    disk_errors,
    staged_artifact,
)
from fastflow.utils.threads import device_name

Inputs = Callable[[int], tuple[Tensor, ...]]  # batch size → fixed-seed example inputs
Scores = Callable[[Tensor], "dict[str, float] | None"]  # images → quality metrics (None: not for these)


@dataclass
class Source:
    """The model to export as built (kernels not swapped in), what it is and where it came from."""

    model: nn.Module
    kind: str  # models.presets.model_kind
    num_classes: int
    checkpoint: str = ""  # "" for a model in memory
    digest: str = ""
    sigma_p: float | None = None
    oftsr_student: bool = False
    arch: str = "unet"


def _source(source: str | Path | nn.Module, o: ExportOptions) -> Source:
    if isinstance(source, nn.Module):
        if is_swapped(source):
            raise ConfigError("export_checkpoint takes a model as built (no kernels swapped in): ask for them with "
                              "ExportOptions.fused, which also records them in the artefact's contract")
        model = source.to(o.device).eval()
        kind = model_kind(getattr(model, "config", None))
        return Source(model, kind, int(getattr(getattr(model, "config", None), "num_classes", 0) or 0))

    record = read_record(source)
    model = load_model(record.path, weights=o.weights, device=o.device)
    _, digest = weights_source(record.path, o.weights)  # verified by the load above
    return Source(model, record.kind, record.num_classes, str(record.path), digest, record.sigma_p,
                  record.oftsr_student, record.arch)


def _check_paths(source: str | Path | nn.Module, o: ExportOptions) -> None:
    """Refuse unwritable or clashing outputs before anything is loaded or compiled."""
    check_new_dir(o.output) if o.pipeline else check_writable(o.output)
    if o.report is not None:
        check_writable(o.report)
    check_distinct({"-o": o.output, "--report": o.report},
                   {"CHECKPOINT": None if isinstance(source, nn.Module) else source})


def _wrap(src: Source, model: nn.Module, o: ExportOptions) -> tuple[nn.Module, str]:
    """The exported module around ``model`` and its generator kind."""
    if src.kind == "token":
        raise ConfigError("a token-conditioned generator exports as a pipeline: add --pipeline")
    if o.velocity:
        if src.kind not in ("unconditional", "class") or is_two_time(src.model):
            raise ConfigError("--velocity exports a one-time velocity field (x, t) → v (a class model's "
                              f"unconditional one); this model is {'two-time' if is_two_time(src.model) else src.kind}")
        return Velocity(model), "velocity"
    if src.kind == "image":  # an OFTSR student: (lq, noise, tau) → image
        if not src.oftsr_student:
            raise ConfigError(f"{src.checkpoint or 'this model'}: image-conditioned models export only as OFTSR "
                              "students (from their checkpoint)")
        return SRGenerator(model, src.sigma_p), "sr"
    return Generator(model, o.steps), "conditional" if src.num_classes else "generator"


def _classes(kind: str, num_classes: int) -> int:
    """The spec's ``num_classes``: labels a conditional generator takes (0 for inputs without labels)."""
    return num_classes if kind == "conditional" else 0


def _inputs(spec: GeneratorSpec, seed: int) -> Inputs:
    g, dtype, device = torch.Generator().manual_seed(seed), DTYPES[spec.dtype], torch.device(spec.device)

    def inputs_for(b: int) -> tuple[Tensor, ...]:
        z = torch.randn(b, *spec.sample_shape, generator=g).to(device=device, dtype=dtype)
        if spec.kind == "sr":
            lq = (torch.rand(b, *spec.sample_shape, generator=g) * 2 - 1).to(device=device, dtype=dtype)
            return lq, z, torch.rand(b, generator=g).to(device)
        if spec.kind == "velocity":
            return z, torch.rand(b, generator=g).to(device)
        if spec.kind == "text_generator":
            return z, torch.randn(b, *spec.cond_shape, generator=g).to(device=device, dtype=dtype)
        if spec.kind == "generator":
            return (z,)
        return z, torch.randint(0, spec.num_classes, (b,), generator=g).to(device)
    return inputs_for


def export_checkpoint(source: str | Path | nn.Module, options: ExportOptions, say: Say = print,
                      scores: Scores | None = None) -> ExportResult:
    """Build the artefact ``options`` describe from ``source`` (see the module docstring); ``say``
    takes the progress lines; ``scores(images)`` (a model's own quality metric, e.g. the digits FD;
    None where it does not apply) joins int8's quality report. Raises
    :class:`~fastflow.errors.FastflowError` subclasses (one line)."""
    o = options
    _check_paths(source, o)
    src = _source(source, o)
    if o.pipeline:
        result = export_text_pipeline(src, o, say)
    else:
        exported, fused = kernel_model(src.model, o, say)
        wrapped, kind = _wrap(src, exported, o)
        spec = GeneratorSpec(kind=kind, sample_shape=tuple(sample_shape(src.model)), batch=o.batch, dtype=o.dtype,
                             steps=o.steps if kind in ("generator", "conditional") else 1,
                             num_classes=_classes(kind, src.num_classes),
                             device=o.device.type, checkpoint_sha256=src.digest, fused=fused,
                             prepack=o.prepack or (bool(o.quantize) and fused != "cpu"), quantize=o.quantize,
                             calibration_samples=_calibration_samples(o, fused),
                             backend="tensorrt" if o.format == "trt-pt2" else "",
                             sigma_p=(src.sigma_p or 0.0) if kind == "sr" else 0.0)
        gen = wrapped.to(device=o.device, dtype=DTYPES[o.dtype]).eval()
        reference = _wrap(src, src.model, o)[0].to(device=o.device, dtype=DTYPES[o.dtype]).eval()
        inputs_for = _inputs(spec, o.seed)
        example = inputs_for(spec.batch.opt)
        calibration = _calibration(spec, inputs_for)
        t0 = time.perf_counter()
        with torch.no_grad():
            out_shape = tuple(gen(*example).shape[1:])
            with staged_artifact(o.output) as staged, disk_errors(o.output):
                FORMATS[o.format].build(gen, example, spec, staged, BuildOptions(
                    o.opset, o.opt_level, o.timing_cache, calibration, external_data=o.external_data))
                check_artefact(o.format, staged, spec, input_names(gen, example), inputs_for, out_shape)
        build_s = time.perf_counter() - t0
        say(f"built {o.output} ({o.output.stat().st_size / 1e6:.2f} MB) in {build_s:.1f}s")
        report = _report(src, o, spec, build_s, input_names(gen, example))
        result = ExportResult(o.output, spec, report)
        _check(result, o, reference, inputs_for, example, say, scores)
    if o.report is not None:
        atomic_write_json(o.report, result.report)
        say(f"wrote {o.report}")
    return result


def _calibration_samples(o: ExportOptions, fused: str) -> int:
    """PT2E and ONNX int8 calibrate on the generator's inputs; the int8 CPU kernel needs no calibration."""
    return (o.calibrate or DEFAULT_CALIBRATION) if o.quantize and fused != "cpu" else 0


def _calibration(spec: GeneratorSpec, inputs_for: Inputs) -> tuple:
    if not spec.calibration_samples:
        return ()

    return tuple(calibration_inputs(inputs_for, spec.calibration_samples, spec.batch.max))


def _report(src: Source, o: ExportOptions, spec: GeneratorSpec, build_s: float, names: list[str]) -> dict[str, Any]:
    return {"checkpoint": src.checkpoint or None, "format": o.format, "artifact": str(o.output),
            "artifact_bytes": o.output.stat().st_size, "build_seconds": build_s, "versions": versions(),
            "device": device_name(o.device),
            "settings": {"dtype": o.dtype, "steps": spec.steps, "batch": vars(spec.batch),
                         "opset": o.opset if o.format == "onnx" else None,
                         "opt_level": o.opt_level if FORMATS[o.format].gpu_only else None,
                         "timing_cache": o.timing_cache, "weights": o.weights, "seed": o.seed,
                         "fused": spec.fused, "quantize": o.quantize or None, "prepack": spec.prepack},
            "sample_shape": list(spec.sample_shape), "inputs": names, "spec": spec.to_dict()}


def _check(result: ExportResult, o: ExportOptions, reference: nn.Module, inputs_for: Inputs,
           example: tuple[Tensor, ...], say: Say, scores: Scores | None) -> None:
    """Validation against eager, int8's quality cost and the timing, as the options ask."""
    spec, report = result.spec, result.report
    runner = FORMATS[o.format].load(o.output, o.device)
    if o.validate:
        sizes = sorted({spec.batch.min, spec.batch.opt, spec.batch.max})
        report["validation"] = val = compare(reference, runner, [inputs_for(b) for b in sizes], o.atol, o.rtol)
        result.passed = bool(val["passed"])
        err = {k: val.get(f"{k}_err", float("nan")) for k in ("max_abs", "mean_abs", "max_rel")}
        say(f"validation {'passed' if val['passed'] else 'FAILED'}: max abs {err['max_abs']:.3g}, mean abs "
            f"{err['mean_abs']:.3g}, max rel {err['max_rel']:.3g}, NaN/Inf {val.get('nan_inf_count', 0)} "
            f"(atol {o.atol}, rtol {o.rtol}, batches {sizes})")
    if o.quantize:
        images = spec.kind in ("generator", "conditional")
        report["int8"] = q = int8_quality(reference, runner, spec, inputs_for, scores=scores if images else None)
        say(f"int8 vs fp32 on {q['samples']} samples: max |Δ| {q['max_abs_err']:.3g}, PSNR {q['psnr_db']:.1f} dB"
            + (f", digits FD {q['fd_fp32']:.2f} → {q['fd_int8']:.2f} ({100 * q['fd_rel_change']:+.1f} %)"
               if "fd_int8" in q else ""))
    if o.iters:
        report["latency_ms"] = latency(runner, example, o.device, o.iters, say)
