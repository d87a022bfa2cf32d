"""One builder and one loader per artefact format, dispatched through one table, :data:`FORMATS`.
Builders write the file; loaders return a ``run(*inputs) → image`` callable over the artefact
(used by validation and latency) that checks its inputs against the artefact's
:class:`~fastflow.export.spec.GeneratorSpec` first."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fastflow.errors import ArtifactError, DTypeError, MissingBackendError
from fastflow.export.package_check import check_package
from fastflow.export.quantize import fp32_onnx_then_int8, quantize_module
from fastflow.export.spec import BatchRange, GeneratorSpec
from fastflow.fused import cpu_block
from fastflow.utils.dtypes import DTYPES
from fastflow.utils.io import atomic_write_json, read_json

Runner = Callable[..., Tensor]  # run(*inputs) → image
Example = tuple[Tensor, ...]  # (z,), (z, label) or (lq, noise, tau)
TRT_HINT = "pip install 'fastflow[tensorrt]' (torch-tensorrt matching your torch)"


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """Settings some formats take: the ONNX opset and output name, TensorRT's optimisation level and
    timing cache, and int8 calibration inputs (empty: no quantization; ``onnx`` and ``pt2`` only)."""

    opset: int = 19
    opt_level: int = 3
    timing_cache: str | None = None
    calibration: tuple[Example, ...] = ()
    output_name: str = "image"
    external_data: bool = False  # ONNX: weights in NAME.data even when the graph fits in one file


def input_names(gen: nn.Module, example: Example) -> list[str]:
    """The generator's forward argument names actually fed (``z[, cond]`` or ``lq, noise, tau``)."""
    return list(gen.input_names[: len(example)])


def _dynamic_shapes(example: Example, batch: BatchRange) -> tuple[dict[int, Any], ...] | None:
    """Dimension 0 of every input is the batch (positional: also fits a quantized graph module)."""
    if not batch.dynamic:
        return None
    dim = torch.export.Dim("batch", min=batch.min, max=batch.max)
    return tuple({0: dim} for _ in example)


def _exported(gen: nn.Module, example: Example, batch: BatchRange) -> torch.export.ExportedProgram:
    return torch.export.export(gen, example, dynamic_shapes=_dynamic_shapes(example, batch))


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


def build_onnx(gen: nn.Module, example: Example, spec: GeneratorSpec, path: Path, options: BuildOptions) -> None:
    """ONNX through the dynamo exporter; calibration inputs given: int8 QDQ (:mod:`~fastflow.export.quantize`)."""
    for mod in ("onnx", "onnxscript"):
        if importlib.util.find_spec(mod) is None:
            raise MissingBackendError(f"--format onnx needs {mod}: pip install onnx onnxscript onnxruntime")

    def export(to: Path) -> None:
        torch.onnx.export(gen, example, str(to), dynamo=True, opset_version=options.opset,
                          dynamic_shapes=_dynamic_shapes(example, spec.batch), input_names=input_names(gen, example),
                          output_names=[options.output_name], verbose=False)
    if options.calibration:
        fp32_onnx_then_int8(export, path, options.calibration, input_names(gen, example))
    else:
        export(path)
        if spec.dtype == "fp16":
            _softmax_in_fp32(path)
    _onnx_layout(path, options.external_data)


#: an ONNX protobuf holds at most 2 GiB: larger graphs keep their weights in ``NAME.data``
ONNX_PROTO_LIMIT = 2**31 - 2**24


def _onnx_layout(path: Path, external: bool) -> None:
    """One self-contained ``.onnx`` file whenever the graph fits in a protobuf (the exporter writes its
    weights to ``NAME.data`` beside it even for tiny models: copied alone, such a graph does not load);
    ``external``, or past 2 GiB, one ``NAME.data`` file that must travel with it."""
    import onnx

    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    if not external and size >= ONNX_PROTO_LIMIT:
        return  # the exporter's layout: external data is the only one that fits
    model = onnx.load(str(path))  # with its external data
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name)  # tensors over 1 KiB: small constants (axes, shapes) stay inline
    else:
        onnx.save_model(model, str(path))
        data.unlink(missing_ok=True)


def load_onnx(path: Path, device: torch.device) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingBackendError("validating ONNX needs onnxruntime: pip install onnxruntime") from None
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda"
                 else ["CPUExecutionProvider"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # PyTorch's thread count: like for like
    sess = ort.InferenceSession(str(path), options, providers=providers)
    names = [i.name for i in sess.get_inputs()]

    def run(*inputs: Tensor) -> Tensor:
        return torch.from_numpy(sess.run(None, {n: x.cpu().numpy() for n, x in zip(names, inputs, strict=True)})[0])
    return run


def load_openvino(path: Path, device: torch.device) -> Runner:
    """An ONNX generator compiled by OpenVINO for the CPU (fp32 inference precision, PyTorch's
    thread count; an int8 QDQ graph runs in int8)."""
    if device.type != "cpu":
        raise MissingBackendError("the openvino backend runs on the CPU here (--device cpu)")
    try:
        import openvino as ov
    except ImportError:
        raise MissingBackendError("the openvino backend needs OpenVINO: pip install 'fastflow[openvino]'") from None
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()  # one request, inputs bound without a copy: ~10 µs less per call

    def run(*inputs: Tensor) -> Tensor:
        arrays = [np.ascontiguousarray(x.detach().cpu().numpy()) for x in inputs]  # alive until infer returns
        for i, a in enumerate(arrays):
            request.set_input_tensor(i, ov.Tensor(a, shared_memory=True))
        request.infer()
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
    return run


def build_ep(gen: nn.Module, example: Example, spec: GeneratorSpec, path: Path, options: BuildOptions) -> None:
    """A ``torch.export`` program (fused ops kept as the registered fastflow ops)."""
    torch.export.save(_exported(gen, example, spec.batch), str(path))


def _register_fused_ops() -> None:
    """Artefacts that call ``torch.ops.fastflow.*`` need the ops registered before loading."""
    if importlib.util.find_spec("triton") is not None:
        import fastflow.fused.attention  # noqa: F401
        import fastflow.fused.groupnorm  # noqa: F401


def load_ep(path: Path, device: torch.device) -> Runner:
    _register_fused_ops()
    prog = torch.export.load(str(path)).module()
    return lambda *inputs: prog(*(x.to(device) for x in inputs))


def _aoti_configs(spec: GeneratorSpec) -> dict[str, Any]:
    """Inductor settings for every ``.pt2`` we write: the spec as metadata, and a batch lower
    bound of 1 under the runtime input checks (export specialises ``min=1`` to 2 otherwise)."""
    return {"aot_inductor.metadata": spec.to_metadata(), "aot_inductor.check_lowerbound": False}


def build_pt2(gen: nn.Module, example: Example, spec: GeneratorSpec, path: Path, options: BuildOptions) -> None:
    """An AOTInductor package; calibration inputs given: int8 through torchao PT2E, compiled with freezing
    (:mod:`~fastflow.export.quantize`). ``spec.prepack`` (``--prepack``) freezes an fp32 package too: weights
    prepacked for oneDNN at build time, not reordered per call (when it pays: ``docs/cpu.md``)."""
    if options.calibration:
        gen = quantize_module(gen, example, options.calibration)
    ep = _exported(gen, example, spec.batch)
    # fused "op": keep the fastflow ops opaque (the package calls the registered ops; CPU under the
    # interpreter). On CUDA ("triton") Inductor compiles the ops' Triton kernels into the package.
    opaque = torch._functorch.config.patch(decompose_custom_triton_ops=spec.fused != "op")
    # Packaged in the temp dir, then copied: PyTorch's zip writer aborts the process (an exception in
    # its destructor) when the disk fills; a Python copy fails with a plain ENOSPC instead.
    with opaque, tempfile.TemporaryDirectory(prefix="fastflow-pt2-") as tmp:
        package = Path(tmp) / path.name
        configs = {**_aoti_configs(spec), "freezing": spec.prepack}
        if spec.fused == "cpu":  # calls the CPU block kernel's C shim
            configs.update(cpu_block.aoti_configs(spec.batch.min == spec.batch.max))
        torch._inductor.aoti_compile_and_package(ep, package_path=str(package), inductor_configs=configs)
        shutil.copyfile(package, path)


def read_pt2_spec(path: Path) -> GeneratorSpec | None:
    """The spec stored in a ``.pt2`` without loading its model (None for a package without one)."""
    if not Path(path).is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        meta = torch._C._aoti.AOTIModelPackageLoader.load_metadata_from_package(str(path), "model")
    except (RuntimeError, ValueError) as e:
        raise ArtifactError(f"{path}: not a readable AOTInductor package ({str(e).splitlines()[0]})") from None
    return GeneratorSpec.from_metadata(meta, str(path))


def load_pt2(path: Path, device: torch.device) -> Runner:
    """An AOTInductor package as a checked runner. Inputs are checked against the package's spec
    and made contiguous (the compiled code assumes the strides it was traced with: a channels-last,
    transposed or expanded tensor would be read wrongly). AOTI's own input checks are switched on
    too, whatever ``AOTI_RUNTIME_CHECK_INPUTS`` said: without them a wrong shape reads out of bounds."""
    check_package(path)  # a cut library would kill this process (SIGBUS) inside the loader
    spec = read_pt2_spec(path)
    if spec is None:
        warnings.warn(f"{path} carries no fastflow metadata (another tool or an older fastflow): inputs are not "
                      "checked against its shapes; re-export it", stacklevel=2)
    if spec is not None and spec.device != device.type:
        raise ArtifactError(f"{path} was compiled for {spec.device}, not {device.type}")
    os.environ["AOTI_RUNTIME_CHECK_INPUTS"] = "1"
    if spec is not None and spec.backend == "tensorrt":
        _import_torch_tensorrt()  # registers the TensorRT engine op the package calls
    if spec is not None and spec.fused == "op":
        _register_fused_ops()
    if spec is not None and spec.fused == "cpu":
        cpu_block.load()  # the C shim the package calls
    try:
        runner = torch._inductor.aoti_load_package(str(path))
    except RuntimeError as e:
        raise ArtifactError(f"{path}: cannot load the package ({str(e).splitlines()[0]})") from None

    def run(*inputs: Tensor) -> Tensor:
        if not all(isinstance(x, Tensor) and x.layout == torch.strided for x in inputs):
            raise DTypeError("a package takes dense (strided) tensors; got "
                             f"{[x.layout if isinstance(x, Tensor) else type(x).__name__ for x in inputs]}")
        inputs = tuple(_dense(x.to(device)) for x in inputs)
        if spec is not None:
            spec.check(*inputs)
        out = runner(*inputs)
        return out[0] if isinstance(out, (list, tuple)) else out
    return run


def _dense(x: Tensor) -> Tensor:
    """``x`` with exactly row-major strides (AOTInductor compares every stride, even of size-1 dims,
    which ``is_contiguous()`` ignores: a channels-last ``[B, 1, H, W]`` counts as contiguous)."""
    want = torch.empty(x.shape, device="meta").stride()
    return x if x.stride() == want else x.clone(memory_format=torch.contiguous_format)


def _import_torch_tensorrt():  # noqa: ANN202 - the module
    if not torch.cuda.is_available():
        raise MissingBackendError("TensorRT needs an NVIDIA GPU with CUDA; use --format onnx or pt2 here")
    try:
        import torch_tensorrt
    except ImportError:
        raise MissingBackendError(f"TensorRT is not installed: {TRT_HINT}") from None
    return torch_tensorrt


def _trt_inputs(example: Example, spec: GeneratorSpec) -> list[Any]:
    """min/opt/max shape profiles of every input (batch dimension only)."""
    tt = _import_torch_tensorrt()
    b = spec.batch
    return [tt.Input(min_shape=(b.min, *x.shape[1:]), opt_shape=(b.opt, *x.shape[1:]),
                     max_shape=(b.max, *x.shape[1:]), dtype=x.dtype) for x in example]


def _trt_settings(spec: GeneratorSpec, opt_level: int, timing_cache: str | None) -> dict[str, Any]:
    kw: dict[str, Any] = {"enabled_precisions": {DTYPES[spec.dtype]}, "optimization_level": opt_level}
    if timing_cache:
        kw["timing_cache_path"] = timing_cache
    return kw


def engine_sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def build_engine(gen: nn.Module, example: Example, spec: GeneratorSpec, path: Path, options: BuildOptions) -> None:
    """A serialized TensorRT engine (plan: ``trtexec --loadEngine``, the TensorRT runtime, Triton
    Inference Server) with one optimisation profile min/opt/max over the batch, and a sidecar
    ``PATH.json`` naming its I/O tensors, their shape ranges and dtypes, the spec and versions."""
    tt = _import_torch_tensorrt()
    import tensorrt as trt

    example = tuple(x.cuda() for x in example)
    plan = tt.dynamo.convert_exported_program_to_serialized_trt_engine(
        _exported(gen.cuda(), example, spec.batch), arg_inputs=_trt_inputs(example, spec),
        **_trt_settings(spec, options.opt_level, options.timing_cache))
    path.write_bytes(plan)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        entry = {"name": name, "mode": "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                 else "output", "dtype": str(engine.get_tensor_dtype(name)).split(".")[-1],
                 "shape": list(engine.get_tensor_shape(name))}
        if entry["mode"] == "input":
            entry["min_shape"], entry["opt_shape"], entry["max_shape"] = (
                list(s) for s in engine.get_tensor_profile_shape(name, 0))
        io.append(entry)

    atomic_write_json(engine_sidecar(path), {
        "format": "fastflow-tensorrt-engine", "metadata": spec.to_metadata(), "io": io,
        "tensorrt": trt.__version__, "torch_tensorrt": tt.__version__, "timing_cache": options.timing_cache,
        "optimization_level": options.opt_level})


def read_engine_spec(path: Path) -> GeneratorSpec:
    """The contract an engine's JSON sidecar holds; a missing or malformed sidecar is an :class:`ArtifactError`."""
    side = read_json(engine_sidecar(path), ArtifactError)
    if not isinstance(side, dict) or not isinstance(side.get("metadata"), dict):
        raise ArtifactError(f"{engine_sidecar(path)}: not an engine sidecar (no 'metadata' object)")
    return GeneratorSpec.from_metadata(side["metadata"], str(path))


def load_engine(path: Path, device: torch.device) -> Runner:
    """A serialized engine run by the TensorRT Python runtime on torch CUDA tensors."""
    _import_torch_tensorrt()
    import tensorrt as trt

    spec = read_engine_spec(path)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ArtifactError(f"{path}: TensorRT could not deserialize the engine (other TensorRT version or GPU?)")
    ctx = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    out_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    to_torch = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
                trt.int32: torch.int32, trt.int64: torch.int64}

    def run(*inputs: Tensor) -> Tensor:
        inputs = tuple(x.to(device).contiguous() for x in inputs)
        spec.check(*inputs)
        for name, x in zip(ins, inputs, strict=True):
            ctx.set_input_shape(name, tuple(x.shape))
            ctx.set_tensor_address(name, x.data_ptr())
        out = torch.empty(tuple(ctx.get_tensor_shape(out_name)), device=device,
                          dtype=to_torch[engine.get_tensor_dtype(out_name)])
        ctx.set_tensor_address(out_name, out.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream(device).cuda_stream):
            raise ArtifactError(f"{path}: TensorRT refused to execute the engine (execute_async_v3 returned false)")
        return out
    return run


def build_trt_pt2(gen: nn.Module, example: Example, spec: GeneratorSpec, path: Path, options: BuildOptions) -> None:
    """TensorRT engines inside an AOTInductor ``.pt2`` (run by ``fastflow-run`` when it links
    ``libtorchtrt_runtime``), with the same metadata and input checks as ``--format pt2``; the spec
    says ``backend="tensorrt"`` (set by :func:`~fastflow.export.api.export_checkpoint` for this format)."""
    tt = _import_torch_tensorrt()
    example = tuple(x.cuda() for x in example)
    trt_gm = tt.dynamo.compile(_exported(gen.cuda(), example, spec.batch), arg_inputs=_trt_inputs(example, spec),
                               **_trt_settings(spec, options.opt_level, options.timing_cache))
    tt.save(trt_gm, str(path), output_format="aot_inductor", retrace=True, arg_inputs=list(example),
            dynamic_shapes=_dynamic_shapes(example, spec.batch), inductor_configs=_aoti_configs(spec))


@dataclasses.dataclass(frozen=True)
class Format:
    """How an artefact format is built from a generator and run, and its file extension."""

    build: Callable[[nn.Module, Example, GeneratorSpec, Path, BuildOptions], None]
    load: Callable[[Path, torch.device], Runner]
    extension: str
    gpu_only: bool
    help: str
    kernels: bool = False  # keeps fastflow's kernels (fused ops, CPU block kernel); else the reference decomposition


#: format name → how it is built and run (the one list ``fastflow-export --format`` offers)
FORMATS: dict[str, Format] = {
    "onnx": Format(build_onnx, load_onnx, ".onnx", False,
                   "ONNX with dynamic batch, GroupNorm and softmax in fp32, run by ONNX Runtime"),
    "pt2": Format(build_pt2, load_pt2, ".pt2", False,
                  "AOTInductor package with input checks and metadata (fastflow-run runs it)", kernels=True),
    "ep": Format(build_ep, load_ep, ".ep", False, "torch.export program", kernels=True),
    "engine": Format(build_engine, load_engine, ".plan", True, "serialized TensorRT plan (+ PATH.json sidecar)"),
    "trt-pt2": Format(build_trt_pt2, load_pt2, ".pt2", True, "TensorRT inside a .pt2"),
}
