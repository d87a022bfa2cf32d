"""The student's one-step generator as deployed artefacts, each timed on the same noise and checked
against eager PyTorch (``max_abs_vs_eager``): the ONNX generator in ONNX Runtime (the
``onnxruntime`` student row) and in OpenVINO (``openvino``), the fp32 package (``aoti``,
``native``; ``benchmarks/cpu_roofline.py``) and its frozen, weight-prepacked form
(``fastflow-export --prepack``: ``aoti-prepack``, ``native-prepack``), the package that calls the
CPU block kernel (``--fused cpu``: ``aoti-cpuk``, ``native-cpuk``), and the int8 artefacts of
``fastflow-export --quantize int8`` — ONNX Runtime's QDQ graph in ONNX Runtime and OpenVINO
(``onnxruntime-int8``, ``openvino-int8``) and torchao's PT2E package from Python and from
``fastflow-run`` (``aoti-int8``, ``native-int8``). Calibration uses the generator's own inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.export import ExportOptions, export_checkpoint
from fastflow.export.formats import load_onnx, load_openvino, load_pt2
from fastflow.export.generator import Generator
from fastflow.export.spec import BatchRange
from fastflow.utils.timing import measure_latency

#: backends that time the student's generator artefact only (one row each)
GENERATOR_BACKENDS = ("openvino", "aoti-prepack", "native-prepack", "aoti-cpuk", "native-cpuk", "onnxruntime-int8",
                      "openvino-int8", "aoti-int8", "native-int8", "aoti-cpuk-int8", "native-cpuk-int8")


@dataclass
class Artefacts:
    """The student's generator artefacts at the batch (and on the device) of ``z``, built on first use
    in ``workdir``; ``fused``: the package keeps the Triton kernels (``--fused triton``)."""

    student: nn.Module  # as built: the export swaps the kernels in
    z: Tensor
    workdir: Path
    fused: bool = False
    built: dict[str, Path] = field(default_factory=dict)

    def path(self, kind: str) -> Path:
        """``onnx``, ``onnx-int8``, ``pt2``, ``pt2-prepack``, ``pt2-cpuk``, ``pt2-cpuk8`` (the int8 CPU block
        kernel) or ``pt2-int8``, made by
        :func:`~fastflow.export.export_checkpoint` at the static batch of ``z``."""
        if kind not in self.built:
            fmt, _, variant = kind.partition("-")
            b = self.z.shape[0]
            path = self.workdir / f"student-generator{'-fused' if self.fused else ''}-{kind}.{fmt}"
            fused = "cpu" if variant in ("cpuk", "cpuk8") else "triton" if self.fused else "off"
            export_checkpoint(self.student, ExportOptions(
                format=fmt, output=path, batch=BatchRange(b, b, b), device=self.z.device, fused=fused,
                prepack=variant == "prepack", quantize="int8" if variant in ("int8", "cpuk8") else "", seed=1),
                say=lambda _: None)
            self.built[kind] = path
        return self.built[kind]

    def runner(self, kind: str, load: Callable[[Path, torch.device], Callable[..., Tensor]]) -> Callable[[], Tensor]:
        run = load(self.path(kind), self.z.device)
        return lambda: run(self.z)


#: backend → (artefact kind, loader) of the artefacts timed from Python
LOADERS = {"onnxruntime": ("onnx", load_onnx), "openvino": ("onnx", load_openvino),
           "onnxruntime-int8": ("onnx-int8", load_onnx), "openvino-int8": ("onnx-int8", load_openvino),
           "aoti": ("pt2", load_pt2), "aoti-prepack": ("pt2-prepack", load_pt2), "aoti-cpuk": ("pt2-cpuk", load_pt2),
           "aoti-int8": ("pt2-int8", load_pt2), "aoti-cpuk-int8": ("pt2-cpuk8", load_pt2)}
#: backend → the package ``fastflow-run`` times
NATIVE = {"native": "pt2", "native-prepack": "pt2-prepack", "native-cpuk": "pt2-cpuk", "native-int8": "pt2-int8",
          "native-cpuk-int8": "pt2-cpuk8"}


def generator_row(art: Artefacts, backend: str, flops: int, params: int, iters: int, warmup: int,
                  native: Callable[[Path], tuple[dict[str, float], Tensor]] | None = None) -> dict[str, Any]:
    """One timed row of the student's one-step generator on ``backend`` — ``eager``, ``compiled``,
    a key of :data:`LOADERS`, or of :data:`NATIVE` (``native`` times ``fastflow-run`` on a package,
    returning its latency and image) — with its largest deviation from eager."""
    gen = Generator(art.student, 1).eval()
    with torch.no_grad():
        ref = gen(art.z).float()
        extra = {}
        if backend in NATIVE:
            package = art.path(NATIVE[backend])
            lat, image = native(package)
            same = load_pt2(package, art.z.device)(art.z).float().cpu()  # Python's run of the same package
            extra["max_abs_vs_aoti"] = float((image.float().cpu() - same).abs().max())
        else:
            if backend == "eager":
                fn = lambda: gen(art.z)  # noqa: E731
            elif backend == "compiled":
                fn = partial(torch.compile(gen, fullgraph=True, dynamic=False), art.z)
            else:
                fn = art.runner(*LOADERS[backend])
            lat, image = measure_latency(fn, "cpu", warmup=warmup, iters=iters).to_dict(), fn()
    return {"model": "student", "backend": backend, "solver": "euler", "steps": 1, "nfe": 1.0, "flops": flops,
            "params": params, "precision": "int8" if backend.endswith("int8") else "fp32",
            "max_abs_vs_eager": float((image.float().cpu() - ref.cpu()).abs().max()), **extra, **lat}
