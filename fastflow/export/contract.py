"""Every artefact checked against its own contract before it is renamed into place, whether or not
validation was asked: what its file declares (ONNX graph inputs' names, dtypes, shapes and the
batch dimension's dynamism; a package's or engine's stored spec) must be the
:class:`~fastflow.export.spec.GeneratorSpec` it was built from, and a small artefact is also called
once at the minimum and once at the maximum batch, its output shaped like eager's. A graph whose
batch a forward specialised (``len()`` of a tensor under ``torch.export``) runs at one batch only:
one :class:`~fastflow.errors.ArtifactError` line, nothing written."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from fastflow.errors import ArtifactError, FastflowError
from fastflow.export.formats import FORMATS, read_engine_spec, read_pt2_spec
from fastflow.export.spec import GeneratorSpec
from fastflow.utils.dtypes import DTYPES

#: artefacts up to this size (with their data files) are also called at the batch range's ends
SMALL_BYTES = 256 * 2**20
_ONNX_DTYPES = {torch.float32: 1, torch.int64: 7, torch.float16: 10, torch.bfloat16: 16}


def input_shapes(spec: GeneratorSpec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Each input's per-sample shape (after the batch) and dtype, as :meth:`GeneratorSpec.check` takes them."""
    out = {}
    for name in spec.inputs:
        if name in ("cond", "tau", "t"):
            out[name] = (), torch.int64 if name == "cond" else torch.float32
        elif name in ("tokens", "emb"):
            out[name] = spec.cond_shape, torch.int64 if name == "tokens" else DTYPES[spec.dtype]
        else:
            out[name] = spec.sample_shape, DTYPES[spec.dtype]
    return out


def check_onnx(path: Path, spec: GeneratorSpec, names: Sequence[str]) -> None:
    """The graph's inputs are ``names`` with the spec's dtypes and shapes; the batch dimension is
    symbolic for a batch range and the batch for a static one."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    got = [i.name for i in graph.input]
    if got != list(names):
        raise ArtifactError(f"{path.name}: graph inputs {got}, the contract says {list(names)}; not written")
    want, b = input_shapes(spec), spec.batch
    for i in graph.input:
        shape, dtype = want[i.name]
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if t.elem_type != _ONNX_DTYPES.get(dtype) or not dims or dims[1:] != list(shape):
            raise ArtifactError(f"{path.name}: input {i.name!r} is {onnx.TensorProto.DataType.Name(t.elem_type)} "
                                f"{['B' if d is None else d for d in dims]}, the contract says {dtype} [B, "
                                f"{', '.join(map(str, shape))}]; not written")
        if dims[0] is not None if b.dynamic else dims[0] != b.min:
            raise ArtifactError(
                f"{path.name}: input {i.name!r} has batch {dims[0] if dims[0] is not None else 'symbolic'}"
                f", the contract says {b.min}..{b.max}: the model's forward specialised the "
                "batch (len() of a tensor?); not written"
            )


def check_stored_spec(fmt: str, path: Path, spec: GeneratorSpec) -> None:
    """A ``.pt2``'s metadata (or an engine's sidecar) holds exactly ``spec``."""
    if fmt in ("pt2", "trt-pt2"):
        stored = read_pt2_spec(path)
    else:
        stored = read_engine_spec(path)
    if stored != spec:
        raise ArtifactError(f"{path.name}: its stored contract {stored} is not the one it was built from; not written")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file())


def check_calls(path: Path, run: Callable[..., Tensor], spec: GeneratorSpec,
                inputs_for: Callable[[int], tuple[Tensor, ...]], out_shape: tuple[int, ...]) -> None:
    """One call at the smallest and one at the largest batch: the output is ``[b, *out_shape]``."""
    for b in sorted({spec.batch.min, spec.batch.max}):
        try:
            with torch.no_grad():
                y = run(*inputs_for(b))
        except FastflowError:
            raise
        except Exception as e:  # noqa: BLE001 - the runtime's own error, as one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ArtifactError(f"{path.name}: does not run at batch {b} of its range {spec.batch.min}.."
                                f"{spec.batch.max} ({type(e).__name__}: {first}); not written") from None
        if tuple(y.shape) != (b, *out_shape):
            raise ArtifactError(f"{path.name}: at batch {b} it returns {tuple(y.shape)}, the contract says "
                                f"{(b, *out_shape)}; not written")


def check_artefact(fmt: str, path: Path, spec: GeneratorSpec, names: Sequence[str],
                   inputs_for: Callable[[int], tuple[Tensor, ...]], out_shape: tuple[int, ...]) -> None:
    """The whole check of a freshly built artefact at its staged ``path``."""
    if fmt == "onnx":
        check_onnx(path, spec, names)
    elif fmt in ("pt2", "trt-pt2", "engine"):
        check_stored_spec(fmt, path, spec)
    if _size(path) <= SMALL_BYTES:
        check_calls(path, FORMATS[fmt].load(path, torch.device(spec.device)), spec, inputs_for, out_shape)
