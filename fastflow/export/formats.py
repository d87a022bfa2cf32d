"""One builder and one loader per artefact format. Builders write the file; loaders return a
``run(z[, label]) → image`` callable over the artefact (used by validation and latency)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastflow.errors import MissingBackendError

Runner = Callable[..., Tensor]  # run(z[, label]) → image
Example = tuple[Tensor, ...]  # (z,), (z, label) or (lq, noise, tau)
FORMATS = ("onnx", "pt2", "ep", "engine")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class BatchRange:
    min: int
    opt: int
    max: int

    @property
    def dynamic(self) -> bool:
        return self.min != self.max


def input_names(gen: nn.Module, example: Example) -> list[str]:
    """The generator's forward argument names actually fed (``z[, cond]`` or ``lq, noise, tau``)."""
    return list(gen.input_names[: len(example)])


def _dynamic_shapes(gen: nn.Module, example: Example, batch: BatchRange) -> dict[str, Any] | None:
    if not batch.dynamic:
        return None
    dim = torch.export.Dim("batch", min=batch.min, max=batch.max)
    return {name: {0: dim} for name in input_names(gen, example)}


def _exported(gen: nn.Module, example: Example, batch: BatchRange) -> torch.export.ExportedProgram:
    return torch.export.export(gen, example, dynamic_shapes=_dynamic_shapes(gen, example, batch))


def _softmax_in_fp32(path: Path) -> None:
    """Run every fp16 Softmax of an ONNX graph in fp32 (Cast → Softmax → Cast back)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    nodes = []
    for node in graph.node:
        if node.op_type != "Softmax":
            nodes.append(node)
            continue
        src, dst = node.input[0], node.output[0]
        up, down = f"{src}__fp32", f"{dst}__fp32"
        nodes.append(helper.make_node("Cast", [src], [up], to=TensorProto.FLOAT, name=f"{node.name}_up"))
        nodes.append(helper.make_node("Softmax", [up], [down], name=node.name, axis=next(
            (a.i for a in node.attribute if a.name == "axis"), -1)))
        nodes.append(helper.make_node("Cast", [down], [dst], to=TensorProto.FLOAT16, name=f"{node.name}_down"))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))


def build_onnx(gen: nn.Module, example: Example, batch: BatchRange, path: Path, opset: int,
               dtype: str) -> None:
    for mod in ("onnx", "onnxscript"):
        if importlib.util.find_spec(mod) is None:
            raise MissingBackendError(f"--format onnx needs {mod}: pip install onnx onnxscript onnxruntime")
    torch.onnx.export(gen, example, str(path), dynamo=True, opset_version=opset,
                      dynamic_shapes=_dynamic_shapes(gen, example, batch),
                      input_names=input_names(gen, example),
                      output_names=["image"], verbose=False)
    if dtype == "fp16":
        _softmax_in_fp32(path)


def load_onnx(path: Path, device: torch.device) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingBackendError("validating ONNX needs onnxruntime: pip install onnxruntime") from None
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda"
                 else ["CPUExecutionProvider"])
    sess = ort.InferenceSession(str(path), providers=providers)
    names = [i.name for i in sess.get_inputs()]

    def run(*inputs: Tensor) -> Tensor:
        return torch.from_numpy(sess.run(None, {n: x.cpu().numpy() for n, x in zip(names, inputs)})[0])
    return run


def build_ep(gen: nn.Module, example: Example, batch: BatchRange, path: Path) -> None:
    torch.export.save(_exported(gen, example, batch), str(path))


def load_ep(path: Path, device: torch.device) -> Runner:
    prog = torch.export.load(str(path)).module()
    return lambda *inputs: prog(*(x.to(device) for x in inputs))


def build_pt2(gen: nn.Module, example: Example, batch: BatchRange, path: Path) -> None:
    torch._inductor.aoti_compile_and_package(_exported(gen, example, batch), package_path=str(path))


def load_pt2(path: Path, device: torch.device) -> Runner:
    runner = torch._inductor.aoti_load_package(str(path))

    def run(*inputs: Tensor) -> Tensor:
        out = runner(*(x.to(device) for x in inputs))
        return out[0] if isinstance(out, (list, tuple)) else out
    return run


def build_engine(gen: nn.Module, example: Example, batch: BatchRange, path: Path, dtype: str,
                 opt_level: int, timing_cache: str | None) -> None:
    if not torch.cuda.is_available():
        raise MissingBackendError("--format engine needs an NVIDIA GPU with CUDA; use --format onnx or pt2 here")
    try:
        import torch_tensorrt
    except ImportError:
        raise MissingBackendError("--format engine needs TensorRT: pip install 'fastflow[tensorrt]' "
                                  "(torch-tensorrt matching your torch)") from None
    inputs = [torch_tensorrt.Input(min_shape=(batch.min, *x.shape[1:]), opt_shape=(batch.opt, *x.shape[1:]),
                                   max_shape=(batch.max, *x.shape[1:]),
                                   dtype=DTYPES[dtype] if x.is_floating_point() else x.dtype)
              for x in example]
    kwargs = {"optimization_level": opt_level}
    if timing_cache:
        kwargs["timing_cache_path"] = timing_cache
    trt = torch_tensorrt.compile(gen.cuda(), ir="dynamo", inputs=inputs,
                                 enabled_precisions={DTYPES[dtype]}, **kwargs)
    torch_tensorrt.save(trt, str(path), inputs=[x.cuda() for x in example])


def load_engine(path: Path, device: torch.device) -> Runner:
    import torch_tensorrt  # noqa: F401  (registers the TensorRT runtime ops)

    prog = torch.export.load(str(path)).module()
    return lambda *inputs: prog(*(x.to(device) for x in inputs))


LOADERS: dict[str, Callable[[Path, torch.device], Runner]] = {
    "onnx": load_onnx, "ep": load_ep, "pt2": load_pt2, "engine": load_engine}
