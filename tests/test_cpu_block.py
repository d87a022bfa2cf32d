"""The CPU block kernel (``fastflow.fused.cpu_block``): the op against its float64 reference on
fresh random inputs over every prologue/epilogue option, input layout, batch/thread split, and odd
channel and pixel counts; typed errors; the module swap against the unswapped UNet; ``--fused cpu`` exports."""

import copy
import json

import pytest
import torch
from helpers import run_cli

from fastflow.errors import ConfigError, DTypeError, MissingBackendError, ShapeError
from fastflow.fused import cpu_block
from fastflow.fused.cpu_block import (
    CpuAttention,
    CpuConv3x3,
    CpuResBlock,
    DeferredNorm,
    MathSDPA,
    conv_block,
    conv_block_ref,
)
from fastflow.fused.swap import share_as
from fastflow.models import build_model, save_model
from fastflow.models.layers import SDPA, Attention

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _case(n, cin, cout, h, w, k=3, norm=True, act=True, resample=None, modulate=False, add=False,
          residual=False, out_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    groups = 4 if cin % 4 == 0 else 1
    ho, wo = {None: (h, w), "up": (2 * h, 2 * w), "down": (h // 2, w // 2)}[resample]
    args = dict(x=r(n, cin, h, w) * 2 + 0.5, weight=r(cout, cin, k, k) * 0.2, bias=r(cout),
                norm=(1 + 0.3 * r(cin), r(cin), groups, 1e-6) if norm else None,
                scale=0.3 * r(n, cin) if modulate else None, shift=r(n, cin) if modulate else None, act=act,
                resample=resample, add=r(n, cout) if add else None,
                residual=r(n, cout, ho, wo) if residual else None, out_scale=out_scale)
    return args


def _f64(args):
    cast = lambda v: v.double() if isinstance(v, torch.Tensor) else v  # noqa: E731
    out = {k: cast(v) for k, v in args.items()}
    if args["norm"] is not None:
        out["norm"] = tuple(cast(v) for v in args["norm"])
    return out


CASES = {  # name: _case kwargs
    "plain": dict(n=1, cin=8, cout=8, h=16, w=16, norm=False, act=False),
    "gn-silu": dict(n=1, cin=16, cout=24, h=8, w=8),
    "gn-no-act": dict(n=2, cin=8, cout=8, h=8, w=8, act=False),
    "silu-no-norm": dict(n=1, cin=3, cout=5, h=5, w=7, norm=False),
    "odd-channels-pixels": dict(n=3, cin=12, cout=13, h=7, w=9),
    "up": dict(n=2, cin=8, cout=12, h=4, w=6, resample="up"),
    "down": dict(n=1, cin=8, cout=4, h=10, w=6, resample="down"),
    "scale-shift": dict(n=2, cin=8, cout=8, h=6, w=6, modulate=True),
    "embedding-add": dict(n=2, cin=16, cout=16, h=4, w=4, add=True),
    "residual-scaled": dict(n=2, cin=8, cout=16, h=8, w=8, residual=True, out_scale=2 ** -0.5),
    "1x1-down-skip": dict(n=2, cin=8, cout=16, h=8, w=8, k=1, norm=False, act=False, resample="down"),
    "1x1-up-skip": dict(n=1, cin=32, cout=16, h=4, w=4, k=1, norm=False, act=False, resample="up"),
    "wide": dict(n=1, cin=64, cout=40, h=4, w=4, add=True, residual=True),
    "split-channels": dict(n=1, cin=32, cout=40, h=16, w=16),  # ≥ 2 MFLOP: 2 threads split the channels
    # the kernel's layouts: im2col (2 ≤ W < a vector of 8 or 16, W dividing it), bordered, flat (1×1)
    "im2col-2-wide": dict(n=1, cin=8, cout=8, h=3, w=2),  # a vector holds more rows than the map
    "im2col-partial": dict(n=2, cin=8, cout=12, h=3, w=4, modulate=True, residual=True),
    "im2col-up": dict(n=1, cin=8, cout=8, h=2, w=4, resample="up"),
    "im2col-down": dict(n=1, cin=8, cout=8, h=16, w=16, resample="down"),
    "bordered-1-wide": dict(n=1, cin=4, cout=4, h=5, w=1),
    "1x1-flat": dict(n=1, cin=16, cout=8, h=16, w=16, k=1, norm=False, act=False, residual=True),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(CASES))
def test_conv_block_matches_float64_reference(name, threads) -> None:
    """Every option against ``conv_block_ref`` in float64; with 2 threads batch 1 splits the output
    channels across threads and larger batches split the samples."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed in (0, 1):  # fresh inputs
            args = _case(**CASES[name], seed=seed)
            got = conv_block(**args)
            want = conv_block_ref(**_f64(args))
            assert got.dtype == torch.float32 and got.shape == want.shape
            err = float((got.double() - want).abs().max())
            assert err <= 2e-5 * (1 + float(want.abs().max())), f"{name}: max |Δ| {err:.3g}"
    finally:
        torch.set_num_threads(before)


def test_conv_block_refuses_bad_input() -> None:
    args = _case(**CASES["gn-silu"])
    with pytest.raises(DTypeError, match="float32"):
        conv_block(**{**args, "x": args["x"].double()})
    with pytest.raises(ShapeError, match="weight"):
        conv_block(**{**args, "weight": torch.randn(8, 16, 5, 5)})
    with pytest.raises(ShapeError, match="weight"):
        conv_block(**{**args, "weight": torch.randn(8, 15, 3, 3)})
    with pytest.raises(ShapeError, match="residual"):
        conv_block(**{**args, "residual": torch.randn(1, 24, 4, 4)})
    with pytest.raises(ShapeError, match="groups"):
        conv_block(**{**args, "norm": (*args["norm"][:2], 5, 1e-6)})
    with pytest.raises(ShapeError, match="even"):
        conv_block(**_case(n=1, cin=4, cout=4, h=5, w=4, resample="down"))
    with pytest.raises(ConfigError, match="inference"):
        conv_block(**{**args, "weight": args["weight"].requires_grad_()})
    with torch.no_grad():  # the same tensors are fine without autograd
        conv_block(**args)


def test_build_failure_is_one_missing_backend_error(monkeypatch) -> None:
    """No compiler (or a failed build): one :class:`MissingBackendError` naming the cause."""
    from torch.utils import cpp_extension

    def fail(**_):
        raise RuntimeError("Error building extension 'fastflow_cpu_ops'\nc++: not found")
    monkeypatch.setattr(cpp_extension, "load", fail)
    monkeypatch.setattr(cpu_block, "_LOADED", [])  # as in a process that has not loaded it yet
    with pytest.raises(MissingBackendError, match="did not build .Error building extension.*C\\+\\+ compiler"):
        cpu_block.load()


def test_kernel_library_links_openmp() -> None:
    """ATen's ``parallel_for`` is a header template that runs serially where the op library is built
    without OpenMP: the library must link the OpenMP runtime PyTorch uses."""
    import subprocess

    deps = subprocess.run(["ldd", cpu_block.load()], capture_output=True, text=True, check=True).stdout
    assert "libgomp" in deps or "libomp" in deps, deps


def test_math_sdpa_equals_sdpa() -> None:
    q, k, v = (torch.randn(2, 3, 16, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(MathSDPA()(q, k, v), SDPA()(q, k, v))


def test_cpu_attention_equals_attention() -> None:
    """Self-attention on strided tokens and cross-attention (a context) as before; same keys."""
    x, ctx = torch.randn(2, 12, 16, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    for attn, args in ((Attention(16, head_dim=8), (x.transpose(0, 1).contiguous().transpose(0, 1),)),  # strided
                       (Attention(16, context_dim=8, head_dim=8), (x, ctx))):
        attn = attn.double()
        fused = share_as(CpuAttention, copy.deepcopy(attn))
        assert list(fused.state_dict()) == list(attn.state_dict())
        torch.testing.assert_close(fused(*args), attn(*args))


@pytest.mark.parametrize("overrides", [{}, {"scale_shift": True, "num_classes": 10}, {"skip_rescale": False},
                                       {"cond_channels": 1}, {"times": 2}])
def test_swap_matches_unswapped_unet(overrides) -> None:
    """The swapped digits-small UNet (ResBlocks with up/down resampling, attention; class labels with
    scale-shift, an image condition, two times) gives the unswapped velocity; parameters and
    state-dict keys are shared and unchanged."""
    torch.manual_seed(0)
    m = build_model({"preset": "digits-small", **overrides}).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    swapped = build_model({"preset": "digits-small", **overrides}).eval()
    swapped.load_state_dict(m.state_dict())
    report = cpu_block.swap_cpu_blocks(swapped)
    assert {now for _, _, now in report.swapped} == {"CpuResBlock", "CpuConv3x3", "CpuAttention", "MathSDPA"}
    assert sum(isinstance(x, CpuResBlock) for x in swapped.modules()) == 15
    assert isinstance(swapped.norm_out, DeferredNorm) and isinstance(swapped.conv_out, CpuConv3x3)
    assert list(swapped.state_dict()) == list(m.state_dict())
    x, t = torch.randn(3, 1, 16, 16), torch.rand(3)
    cond = (torch.randint(0, 10, (3,)) if overrides.get("num_classes") else
            torch.randn(3, 1, 16, 16) if overrides.get("cond_channels") else None)
    t_end = torch.ones(3) if overrides.get("times") == 2 else None
    with torch.no_grad():
        torch.testing.assert_close(swapped(x, t, cond, t_end), m(x, t, cond, t_end), atol=2e-5, rtol=1e-4)


def test_cpu_res_block_refuses_training() -> None:
    m = build_model({"preset": "tiny", "dropout": 0.1})
    cpu_block.swap_cpu_blocks(m)
    with torch.no_grad(), pytest.raises(ConfigError, match="inference"):  # dropout would be skipped
        m(torch.randn(1, 3, 8, 8), torch.rand(1))
    with pytest.raises(ConfigError, match="inference"):  # no gradients through the kernel
        m.eval()(torch.randn(1, 3, 8, 8), torch.rand(1))


def _small_ckpt(path):
    torch.manual_seed(0)
    m = build_model({"arch": "unet", "in_channels": 1, "resolution": 8, "channels": 8, "num_res_blocks": 1,
                     "ch_mult": (1, 2), "attn_resolutions": (4,), "dropout": 0.0})
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    save_model(path, m, m)
    return path


@pytest.mark.slow  # ~55 s; make test exports and runs a --fused cpu package in ctest (runner.cpuk-*)
def test_export_cpu_kernels_package(tmp_path) -> None:
    """``fastflow-export --fused cpu``: a package that calls the kernel's C shim for every
    convolution and C++ GEMM templates, not ATen, for the linears and attention products (at a
    static batch), validates against PyTorch and records ``fused: cpu``."""
    import zipfile

    from fastflow.export.formats import read_pt2_spec

    out, report = tmp_path / "g.pt2", tmp_path / "r.json"
    res = run_cli("-m", "fastflow.cli.export", str(_small_ckpt(tmp_path / "ckpt")), "--format", "pt2", "--fused",
                  "cpu", "--batch", "1", "-o", str(out), "--validate", "--report", str(report), timeout=600,
                  env={"FASTFLOW_THREADS": "1"})  # max-autotune's choice: on 2 threads it may keep ATen's addmm
    assert res.returncode == 0 and "validation passed" in res.stdout, res.stderr[-3000:]
    assert read_pt2_spec(out).fused == "cpu" and json.loads(report.read_text())["settings"]["fused"] == "cpu"
    with zipfile.ZipFile(out) as zf:
        code = "".join(zf.read(n).decode(errors="replace") for n in zf.namelist() if n.endswith("wrapper.cpp"))
    assert code.count("aoti_torch_cpu_conv_block(") >= 12 and "aoti_torch_cpu_convolution(" not in code
    assert not any(f"aoti_torch_cpu_{op}_out(" in code for op in ("mm", "addmm", "bmm"))


@pytest.mark.parametrize("bad", [["--format", "onnx"], ["--format", "pt2", "--dtype", "fp16"],
                                 ["--format", "pt2", "--prepack"],
                                 ["--format", "pt2", "--quantize", "int8", "--calibrate", "16"]])
def test_export_cpu_kernels_refusals_exit_2(tmp_path, bad) -> None:
    res = run_cli("-m", "fastflow.cli.export", str(_small_ckpt(tmp_path / "ckpt")), "--fused", "cpu", *bad,
                  "-o", str(tmp_path / "x.pt2"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--fused cpu" in res.stderr, res.stderr
