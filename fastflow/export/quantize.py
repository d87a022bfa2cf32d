r"""Post-training static int8 quantization of an exported generator (``fastflow-export --quantize int8``).

Static quantization needs activation ranges, and a generator's inputs are its own calibration set:
noise :math:`z \sim \mathcal N(0, I)`, uniform class labels, uniform :math:`\tau` — no data set is
involved (:func:`calibration_inputs`). Two maintained tool chains do the rest:

- ONNX (:func:`quantize_onnx`): ONNX Runtime's static QDQ quantization, per-channel int8 weights and
  uint8 activations on the convolutions (but the stem on the noise) and the weight ``MatMul``\ s only,
  so GroupNorm's statistics, softmax, attention's two products, the time embedding's ``Gemm``\ s
  (tiny, and OpenVINO does not compile their QDQ form) and every elementwise op stay in float. ONNX
  Runtime and OpenVINO both run the QDQ graph in int8.
- ``.pt2`` (:func:`quantize_module`): PyTorch 2 export quantization for x86 through torchao's
  ``X86InductorQuantizer`` (oneDNN int8 convolutions and linears); the converted program is compiled
  by AOTInductor with freezing on (which packs the int8 weights), so ``fastflow-run`` runs it as any
  other package. GroupNorm and softmax are not annotated and stay in float.

Both are CPU targets (x86 oneDNN / ONNX Runtime's CPU kernels) and take fp32 generators.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from fastflow.errors import ConfigError, MissingBackendError

Example = tuple[Tensor, ...]
#: artefact formats ``--quantize int8`` applies to
QUANTIZE_FORMATS = ("onnx", "pt2")
#: the ONNX ops quantized when they carry a weight (everything else, GroupNorm, softmax and Gemm included, stays float)
ONNX_OPS = ("Conv", "MatMul")
#: samples drawn for calibration by default
DEFAULT_CALIBRATION = 256


def check_quantize(fmt: str, dtype: str, device: torch.device) -> None:
    """Refuse what int8 export cannot do, in one line, before anything is built."""
    if fmt not in QUANTIZE_FORMATS:
        raise ConfigError(f"--quantize int8 applies to --format {' or '.join(QUANTIZE_FORMATS)}, not {fmt}")
    if dtype != "fp32":
        raise ConfigError(f"--quantize int8 quantizes an fp32 generator: drop --dtype {dtype}")
    if device.type != "cpu":
        raise ConfigError("--quantize int8 targets CPUs (oneDNN, ONNX Runtime's CPU kernels): use --device cpu")


def calibration_inputs(inputs_for: Callable[[int], Example], samples: int, batch: int) -> list[Example]:
    """``samples`` generator inputs in batches of at most ``batch`` (the generator's own input
    distribution: ``inputs_for(b)`` draws noise, labels and τ)."""
    return [inputs_for(min(batch, samples - i)) for i in range(0, samples, batch)]


def quantize_onnx(src: Path, dst: Path, calibration: Sequence[Example], names: Sequence[str]) -> None:
    """ONNX Runtime static QDQ int8 of the fp32 graph ``src`` (with its external data beside it),
    calibrated on ``calibration`` (MinMax ranges), written to ``dst``."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise MissingBackendError("--quantize int8 with --format onnx needs onnxruntime: pip install onnxruntime") \
            from None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{n: x.cpu().numpy() for n, x in zip(names, ex, strict=True)} for ex in calibration])

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(ONNX_OPS), nodes_to_exclude=float_nodes(src))


def float_nodes(path: Path) -> list[str]:
    """The ``ONNX_OPS`` nodes that stay float: ``MatMul`` nodes with no weight input (attention's
    ``q·kᵀ`` and ``softmax·v``, as in the PT2E path, which quantizes layers with weights only) and the
    convolutions that read a graph input (the stem on the noise: a negligible share of the FLOPs, and
    OpenVINO's int8 stem on one-channel noise is an order of magnitude off; both measured in
    ``benchmarks/NOTES.md``, "Notes moved out of the code")."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input}
    return [
        n.name
        for n in graph.node
        if (n.op_type == "MatMul" and not weights & set(n.input)) or (n.op_type == "Conv" and inputs & set(n.input))
    ]


def quantize_module(gen: nn.Module, example: Example, calibration: Sequence[Example]) -> nn.Module:
    """The generator as a torchao PT2E int8 module for x86 (quantize/dequantize around oneDNN's int8
    convolutions and linears), calibrated on ``calibration``; export it again and compile it with
    ``freezing`` on to get the int8 kernels."""
    logging.getLogger("torchao").setLevel(logging.ERROR)  # its CUDA-only extensions fail to load on CPUs, loudly
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError:
        raise MissingBackendError("--quantize int8 with --format pt2 needs torchao: pip install 'fastflow[int8]'") \
            from None
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(gen, example).module(), quantizer)
    with torch.no_grad():
        for inputs in calibration:
            prepared(*inputs)
    return convert_pt2e(prepared)


def fp32_onnx_then_int8(export: Callable[[Path], None], dst: Path, calibration: Sequence[Example],
                        names: Sequence[str]) -> None:
    """Export the fp32 graph with ``export(path)`` into a scratch directory, then quantize it to ``dst``."""
    with tempfile.TemporaryDirectory(prefix="fastflow-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export(fp32)
        quantize_onnx(fp32, dst, calibration, names)
