"""The CPU block kernel: a UNet ResBlock's two 3×3 convolutions with GroupNorm + SiLU (+ resampling)
fused in front and the bias, time embedding and residual fused behind (``kernels/cpu/conv_block.cpp``; the
op and its C shim in ``kernels/cpu/conv_block_op.cpp``; packaged as ``fastflow/fused/csrc``, a link to it).

For batch-1 inference on CPUs, where a small one-step student is bound by per-op overhead and by
GEMM libraries' use of 8–64 channels. Inference only (fp32, NCHW, no autograd). Three layers, as
for the Triton kernels: the op (:func:`conv_block`, reference :func:`conv_block_ref`), the module
(:class:`CpuResBlock`, a drop-in ``ResBlock``), and the swap (:func:`swap_cpu_blocks`, what
``fastflow.fused.apply(model, "cpu")`` — ``--fused cpu`` — calls; the ``*-cpuk`` benchmark backends).

The op is compiled from source on first use (``torch.utils.cpp_extension``, cached; needs a C++
compiler, as AOTInductor does) and carries a C shim, so an AOTInductor package calls it directly
(:func:`aoti_configs`); ``fastflow-run`` links the same source.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import subprocess
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastflow.errors import ConfigError, DTypeError, MissingBackendError, ShapeError
from fastflow.fused.swap import SwapReport, replace_module, share_as
from fastflow.models.layers import SDPA, Attention, GroupNormAct, ResBlock, resample2x, resampled_size
from fastflow.models.reference import group_norm_ref
from fastflow.models.unet import UNet

CSRC = Path(__file__).parent / "csrc"
SOURCES = [str(CSRC / f) for f in ("conv_block.cpp", "conv_block_q8.cpp", "conv_block_op.cpp")]
RESAMPLE = {None: 0, "up": 1, "down": -1}

#: The C shim declaration AOTInductor needs (``aot_inductor.custom_ops_to_c_shims``).
SHIM = ("AOTITorchError aoti_torch_cpu_conv_block(AtenTensorHandle x, AtenTensorHandle weight, "
        "AtenTensorHandle* bias, AtenTensorHandle* norm_weight, AtenTensorHandle* norm_bias, "
        "AtenTensorHandle* scale, AtenTensorHandle* shift, int64_t groups, double eps, int32_t act, "
        "int64_t resample, AtenTensorHandle* add, AtenTensorHandle* residual, double out_scale, "
        "AtenTensorHandle* ret0)")


#: the int8 op's C shim declaration
SHIM_Q8 = ("AOTITorchError aoti_torch_cpu_conv_block_q8(AtenTensorHandle x, AtenTensorHandle qweight, "
           "AtenTensorHandle w_scale, AtenTensorHandle* bias, AtenTensorHandle* norm_weight, "
           "AtenTensorHandle* norm_bias, AtenTensorHandle* scale, AtenTensorHandle* shift, int64_t groups, "
           "double eps, int32_t act, int64_t resample, AtenTensorHandle* add, AtenTensorHandle* residual, "
           "double out_scale, AtenTensorHandle* ret0)")
#: the op library this process loaded: ``(arch, path)`` (one per process: the ops register once)
_LOADED: list[tuple[str, str]] = []


def load(arch: str = "native") -> str:
    """Build (once, cached on disk) and load the op library compiled with ``-march=arch``; returns its path.
    ``native`` is what every caller wants; another arch (``haswell``: AVX2 only) is for tests of the other
    code paths, and must come first in its process. Loaded with global symbols, so that AOTInductor packages
    resolve the C shims. :class:`MissingBackendError` without a compiler."""
    if _LOADED:
        if arch not in ("native", _LOADED[0][0]):
            raise ConfigError(f"the CPU block kernel is already loaded for -march={_LOADED[0][0]} in this process")
        return _LOADED[0][1]
    from torch.utils import cpp_extension

    try:
        # the headers' digest in the name: torch rebuilds on a change of the sources only
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(CSRC.glob("*.h")))).hexdigest()[:12]
        path = cpp_extension.load(name=f"fastflow_cpu_ops_{arch.replace('-', '_')}_{digest}", sources=SOURCES,
                                  is_python_module=False, extra_cflags=["-O3", f"-march={arch}", "-fopenmp"],
                                  extra_ldflags=["-fopenmp"], verbose=False)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:  # no compiler, or it failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MissingBackendError(f"the CPU block kernel did not build ({first}); it needs a C++ compiler") from None
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    _register_fakes()
    _LOADED.append((arch, path))
    return path


def _register_fakes() -> None:
    """Shapes of the ops' outputs for tracing (``torch.export``)."""

    def out(x: Tensor, cout: int, resample: int) -> Tensor:
        how = next(k for k, v in RESAMPLE.items() if v == resample)
        return x.new_empty(x.shape[0], cout, *resampled_size(*x.shape[2:], how))

    @torch.library.register_fake("fastflow_cpu::conv_block")
    def _(x, weight, bias, norm_weight, norm_bias, scale, shift, groups, eps, act, resample, add,
          residual, out_scale):
        return out(x, weight.shape[0], resample)

    @torch.library.register_fake("fastflow_cpu::conv_block_q8")
    def _q8(x, qweight, w_scale, bias, norm_weight, norm_bias, scale, shift, groups, eps, act, resample, add,
            residual, out_scale):
        return out(x, qweight.shape[0], resample)


def aoti_configs(static_batch: bool) -> dict[str, Any]:
    """Inductor settings of a package that calls the op (loads it): its C shim and, at a static
    batch, Inductor's C++ GEMM templates for what is left around it (small linears and attention
    products, where an ATen call costs more than the product; with a dynamic batch they would compile
    them for the example's batch only)."""
    load()
    configs: dict[str, Any] = {
        "aot_inductor.custom_ops_to_c_shims": {torch.ops.fastflow_cpu.conv_block.default: [SHIM],
                                               torch.ops.fastflow_cpu.conv_block_q8.default: [SHIM_Q8]}
    }
    if static_batch:
        configs.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN")
    return configs


def conv_block_ref(x: Tensor, weight: Tensor, bias: Tensor | None, norm: tuple[Tensor, Tensor, int, float] | None,
                   scale: Tensor | None = None, shift: Tensor | None = None, act: bool = True,
                   resample: str | None = None, add: Tensor | None = None, residual: Tensor | None = None,
                   out_scale: float = 1.0) -> Tensor:
    """``(conv(resample(act(GN(x)·(1+scale)+shift))) + bias + add + residual) · out_scale`` (3×3 with
    padding 1, or 1×1, by the weight);
    ``norm = (weight, bias, groups, eps)`` or ``None`` (then ``act`` applies to ``x`` itself)."""
    if norm is not None:
        a = group_norm_ref(x, norm[0], norm[1], norm[2], norm[3], scale, shift, act)
    else:
        a = F.silu(x) if act else x
    y = F.conv2d(resample2x(a, resample), weight, bias, padding=weight.shape[-1] // 2)
    if add is not None:
        y = y + add[:, :, None, None]
    if residual is not None:
        y = y + residual
    return y * out_scale


def conv_block(x: Tensor, weight: Tensor, bias: Tensor | None, norm: tuple[Tensor, Tensor, int, float] | None,
               scale: Tensor | None = None, shift: Tensor | None = None, act: bool = True,
               resample: str | None = None, add: Tensor | None = None, residual: Tensor | None = None,
               out_scale: float = 1.0) -> Tensor:
    """:func:`conv_block_ref` with the CPU kernel: float32 CPU tensors (:class:`DTypeError`
    otherwise), shapes as documented (:class:`ShapeError`), inference only (no autograd)."""
    load()
    _check_weight(x, weight)
    check_inputs(x, weight.shape[0], bias, norm, scale, shift, resample, add, residual)
    nw, nb, groups, eps = norm if norm is not None else (None, None, 1, 0.0)
    c = (lambda t: None if t is None else t.contiguous())  # noqa: E731
    return torch.ops.fastflow_cpu.conv_block(
        x.contiguous(), weight.contiguous(), c(bias), c(nw), c(nb), c(scale), c(shift), groups, eps, act,
        RESAMPLE[resample], c(add), c(residual), out_scale)


def _check_weight(x: Tensor, weight: Tensor) -> None:
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        raise DTypeError(f"the CPU block kernel takes float32 CPU tensors, weight is {weight.dtype} on {weight.device}")
    if weight.requires_grad and torch.is_grad_enabled():
        raise ConfigError("the CPU block kernel is inference-only: call it under torch.no_grad()")
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1:] not in ((x.shape[1], 3, 3), (x.shape[1], 1, 1)):
        raise ShapeError(f"conv_block: x [B, C, H, W] and weight [Cout, C, 3, 3] or [Cout, C, 1, 1], got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")


def check_inputs(x: Tensor, cout: int, bias: Tensor | None, norm: tuple[Tensor, Tensor, int, float] | None,
                 scale: Tensor | None, shift: Tensor | None, resample: str | None, add: Tensor | None,
                 residual: Tensor | None) -> None:
    """The float inputs of a block call (both kernels): float32 CPU tensors of the documented shapes."""
    tensors = {"x": x, "bias": bias, "scale": scale, "shift": shift, "add": add,
               "residual": residual, "norm weight": norm[0] if norm else None, "norm bias": norm[1] if norm else None}
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise DTypeError(f"the CPU block kernel takes float32 CPU tensors, {name} is {t.dtype} on {t.device}")
        if t.requires_grad and torch.is_grad_enabled():
            raise ConfigError("the CPU block kernel is inference-only: call it under torch.no_grad()")
    if x.dim() != 4:
        raise ShapeError(f"conv_block: x must be [B, C, H, W], got {tuple(x.shape)}")
    if resample not in RESAMPLE:
        raise ShapeError(f"conv_block: resample must be one of None, 'up', 'down', got {resample!r}")
    n, c, h, w = x.shape
    if resample == "down" and (h % 2 or w % 2):
        raise ShapeError(f"conv_block: 2× down needs even H and W, got {h}×{w}")
    if norm is not None and (norm[2] < 1 or c % norm[2]):
        raise ShapeError(f"conv_block: {c} channels do not split into {norm[2]} groups")
    ho, wo = resampled_size(h, w, resample)
    want = {"bias": (cout,), "scale": (n, c), "shift": (n, c), "add": (n, cout), "residual": (n, cout, ho, wo),
            "norm weight": (c,), "norm bias": (c,)}
    for name, shape in want.items():
        t = tensors[name]
        if t is not None and tuple(t.shape) != shape:
            raise ShapeError(f"conv_block: {name} must be {list(shape)}, got {list(t.shape)}")
    if (scale is not None or shift is not None) and norm is None:
        raise ShapeError("conv_block: scale/shift modulate the GroupNorm: pass norm")


class CpuResBlock(ResBlock):
    """A :class:`~fastflow.models.layers.ResBlock` whose forward runs two :func:`conv_block` calls
    (plus the 1×1 skip and the embedding). Same parameters and state-dict keys; inference only."""

    def conv(self, name: str, x: Tensor, norm: GroupNormAct | None, **kw: Any) -> Tensor:
        """The block call of convolution ``name`` (``conv0``, ``conv1``, ``skip``) with its prologue norm; the
        int8 block (:class:`~fastflow.fused.cpu_block_q8.Q8ResBlock`) overrides only this."""
        conv = getattr(self, name)
        fused = None if norm is None else (norm.weight, norm.bias, norm.num_groups, norm.eps)
        return conv_block(x, conv.weight, conv.bias, fused, **kw)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        if self.training and self.dropout.p > 0:
            raise ConfigError(f"{type(self).__name__} is inference-only (dropout is active in training mode): "
                              "call .eval()")
        n0, n1 = self.norm0, self.norm1
        e = self.emb(F.silu(temb))
        h = self.conv("conv0", x, n0, act=n0.act, resample=self.resample, add=None if self.scale_shift else e)
        scale, shift = e.chunk(2, dim=1) if self.scale_shift else (None, None)
        if self.skip is not None:  # the 1×1 skip through the same kernel, resampling fused
            skip = self.conv("skip", x, None, act=False, resample=self.resample)
        else:
            skip = resample2x(x, self.resample)
        return self.conv("conv1", h, n1, scale=scale, shift=shift, act=n1.act, residual=skip,
                         out_scale=1 / math.sqrt(2.0) if self.skip_rescale else 1.0)


class CpuConv3x3(nn.Conv2d):
    """A 3×3 ``nn.Conv2d`` (padding 1) through :func:`conv_block`, optionally with the
    ``GroupNormAct`` before it fused in (``norm``; that module becomes a :class:`DeferredNorm`)."""

    @classmethod
    def from_module(cls, conv: nn.Conv2d, norm: GroupNormAct | None = None) -> CpuConv3x3:
        new = share_as(cls, conv)
        new.__dict__["fused_norm"] = norm  # a reference, not a submodule: state-dict keys unchanged
        return new

    def forward(self, x: Tensor) -> Tensor:
        n = self.fused_norm
        if n is None:
            return conv_block(x, self.weight, self.bias, None, act=False)
        return conv_block(x, self.weight, self.bias, (n.weight, n.bias, n.num_groups, n.eps), act=n.act)


class DeferredNorm(GroupNormAct):
    """A ``GroupNormAct`` whose work the next :class:`CpuConv3x3` does: the identity here (keeps
    its parameters, so state-dict keys are unchanged)."""

    def forward(self, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
        return x


class MathSDPA(SDPA):
    """The attention core ``softmax(q kᵀ/√d) v`` written out: at a few tokens its products compile
    into small GEMM kernels, cheaper than a fused attention call."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # softmax normalised after the product with v: Inductor does not fold this form back
        # into its fused attention call (attention_math's form it would)
        s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        p = torch.exp(s - s.amax(dim=-1, keepdim=True))
        return (p @ v) / p.sum(dim=-1, keepdim=True)


class CpuAttention(Attention):
    """An :class:`~fastflow.models.layers.Attention` that makes its tokens contiguous first: Inductor's
    C++ GEMM templates then take the q/k/v projections (on the block's transposed view they were three
    ATen ``mm`` calls, ~4 µs each at 16 tokens). Same parameters and state-dict keys."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return super().forward(x.contiguous(), context)


def _is_conv3x3(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.padding == (1, 1) and m.stride == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1)


def has_unet(model: nn.Module) -> bool:
    """Whether ``model`` holds a fastflow ``UNet`` (what :func:`swap_cpu_blocks` puts the kernel into)."""
    return any(isinstance(m, UNet) for m in model.modules())


def swap_cpu_blocks(model: nn.Module) -> SwapReport:
    """Put the CPU block kernel into every fastflow ``UNet`` in ``model`` (in place): each
    ``ResBlock`` → :class:`CpuResBlock`, ``conv_in`` and ``norm_out`` + ``conv_out`` →
    :class:`CpuConv3x3`, attention → :class:`CpuAttention` with :class:`MathSDPA` cores. Loads the
    kernel first, so a missing compiler is one :class:`MissingBackendError`. Inference only."""
    load()
    report = SwapReport()
    for prefix, unet in list(model.named_modules()):
        if not isinstance(unet, UNet):
            continue
        pre = f"{prefix}." if prefix else ""
        for name, m in list(unet.named_modules()):
            if type(m) is ResBlock:
                replace_module(unet, name, share_as(CpuResBlock, m))
                report.swapped.append((pre + name, "ResBlock", "CpuResBlock"))
            elif type(m) is Attention:
                replace_module(unet, name, share_as(CpuAttention, m))
                report.swapped.append((pre + name, "Attention", "CpuAttention"))
            elif type(m) is SDPA:
                replace_module(unet, name, MathSDPA())
                report.swapped.append((pre + name, "SDPA", "MathSDPA"))
        if _is_conv3x3(unet.conv_in):
            unet.conv_in = CpuConv3x3.from_module(unet.conv_in)
            report.swapped.append((pre + "conv_in", "Conv2d", "CpuConv3x3"))
        if _is_conv3x3(unet.conv_out) and type(unet.norm_out) is GroupNormAct:
            unet.conv_out = CpuConv3x3.from_module(unet.conv_out, unet.norm_out)
            unet.norm_out = share_as(DeferredNorm, unet.norm_out)
            report.swapped.append((pre + "norm_out+conv_out", "GroupNormAct+Conv2d", "CpuConv3x3"))
    return report
