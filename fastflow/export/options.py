"""What an export is asked to make (:class:`ExportOptions`, typed and checked once) and what it made
(:class:`ExportResult`). ``fastflow-export``'s flags map one to one onto the options' fields."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastflow.errors import ConfigError, MissingBackendError
from fastflow.export.formats import FORMATS, TRT_HINT
from fastflow.export.quantize import check_quantize
from fastflow.export.spec import BatchRange, GeneratorSpec
from fastflow.fused.switch import check_mode
from fastflow.utils.dtypes import DTYPES

#: what a text-to-image pipeline is built of, in chain order
CHAIN = ("text_encoder", "generator", "vae_decoder")


@dataclass(frozen=True)
class ExportOptions:
    """One export: the artefact ``format`` written to ``output`` (a new directory with ``pipeline``),
    its batch range, dtype, Euler ``steps`` inside, the kernel path (``fused``: auto, off, triton, cpu —
    :func:`fastflow.fused.apply`), oneDNN ``prepack``, int8 ``quantize`` with ``calibrate`` samples
    (0: the default), the ``velocity`` field instead of the generator, a ``pipeline`` of
    ``components`` with CFG scale ``cfg``, ``validate`` against eager within ``atol``/``rtol``,
    ``iters`` timed calls, the inputs' ``seed``, ONNX ``opset`` (and ``external_data``: weights in
    ``NAME.data`` even when the graph fits in one file), TensorRT's ``opt_level`` and ``timing_cache``,
    and a JSON ``report`` path."""

    format: str
    output: Path
    batch: BatchRange = field(default_factory=lambda: BatchRange(1, 8, 8))
    dtype: str = "fp32"
    steps: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    weights: str = "ema"
    fused: str = "auto"
    prepack: bool = False
    quantize: str = ""
    calibrate: int = 0
    velocity: bool = False
    pipeline: bool = False
    cfg: float = 1.0
    components: tuple[str, ...] | None = None
    context_length: int = 77
    validate: bool = False
    atol: float = 1e-4
    rtol: float = 1e-3
    iters: int = 0
    seed: int = 0
    opset: int = 19
    opt_level: int = 3
    timing_cache: str | None = None
    report: Path | None = None
    external_data: bool = False

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - normalise a frozen field
        set_("output", Path(self.output))
        set_("device", torch.device(self.device))
        set_("fused", check_mode(self.fused, "fused"))
        if self.report is not None:
            set_("report", Path(self.report))
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r} (expected {', '.join(FORMATS)})")
        if self.dtype not in DTYPES or self.weights not in ("ema", "model"):
            raise ConfigError(f"dtype is one of {', '.join(DTYPES)} and weights ema or model; got {self.dtype!r}, "
                              f"{self.weights!r}")
        if self.steps < 1 or self.opset < 18 or self.iters < 0 or self.calibrate < 0 or self.context_length < 1 \
                or not (math.isfinite(self.cfg) and self.atol >= 0 and self.rtol >= 0):
            raise ConfigError("need steps >= 1, --opset >= 18 (GroupNormalization, dynamo exporter), iters >= 0, "
                              "calibrate >= 0, context length >= 1, a finite cfg and tolerances >= 0")
        if FORMATS[self.format].gpu_only and not torch.cuda.is_available():  # fail fast
            raise MissingBackendError(f"--format {self.format} needs an NVIDIA GPU with CUDA and TensorRT "
                                      f"({TRT_HINT}); use --format onnx or pt2 here")
        self._check_packing()
        self._check_pipeline()

    def _check_packing(self) -> None:
        """quantize / prepack / fused=cpu: what each needs, and that they exclude each other."""
        if self.quantize:
            if self.quantize != "int8":
                raise ConfigError(f"--quantize takes int8, got {self.quantize!r}")
            check_quantize(self.format, self.dtype, self.device)
            if self.fused == "triton":
                raise ConfigError("--quantize int8 keeps the reference ops: drop --fused triton")
        elif self.calibrate:
            raise ConfigError("--calibrate sets the int8 calibration: add --quantize int8")
        if self.prepack and (self.format != "pt2" or self.device.type != "cpu"):
            raise ConfigError("--prepack packs weights for oneDNN on the CPU: use it with --format pt2 --device cpu")
        if self.fused == "cpu" and (self.format != "pt2" or self.device.type != "cpu" or self.dtype != "fp32"):
            raise ConfigError("--fused cpu is the CPU block kernel (fp32 or --quantize int8): use it with --format pt2 "
                              "--device cpu --dtype fp32")
        if self.external_data and self.format != "onnx":
            raise ConfigError("--external-data lays out ONNX weights: use it with --format onnx")
        if self.fused == "cpu" and self.prepack:
            raise ConfigError("--fused cpu replaces the convolutions --prepack would pack: use one")
        if self.fused == "cpu" and self.calibrate:
            raise ConfigError("--fused cpu --quantize int8 quantises each call's activations over their own range: "
                              "drop --calibrate")

    def _check_pipeline(self) -> None:
        if self.pipeline and (self.quantize or self.prepack or self.fused == "cpu" or self.velocity):
            flag = ("quantize int8" if self.quantize else "prepack" if self.prepack else "velocity"
                    if self.velocity else "fused cpu")
            raise ConfigError(f"--{flag} applies to single-file generators; drop it with --pipeline")
        if not self.pipeline and (self.cfg != 1.0 or self.components is not None):
            raise ConfigError("--cfg and --components are --pipeline settings: add --pipeline")
        if self.components is not None:
            unknown = [n for n in self.components if n not in CHAIN]
            if unknown or not self.components:
                raise ConfigError(f"--components takes {', '.join(CHAIN)} (comma-separated), got "
                                  f"{','.join(self.components)!r}")
        if self.velocity and self.steps != 1:
            raise ConfigError("--velocity exports the velocity field (one call, no steps): drop --steps")


@dataclass
class ExportResult:
    """What :func:`~fastflow.export.api.export_checkpoint` made: the artefact (or pipeline directory),
    its contract (``spec``; a pipeline's generator's), the pipeline's manifest, the report (what
    ``--report`` writes) and whether validation passed (True when not asked)."""

    path: Path
    spec: GeneratorSpec
    report: dict[str, Any]
    passed: bool = True
    manifest: dict[str, Any] | None = None
