"""Fused kernels: the Triton kernels themselves (through Triton's interpreter on CPU, on the GPU
when there is one) against float64 references on fresh random inputs, with outputs poisoned
before every run; registration (opcheck, torch.compile); fallbacks; swap() on whole models."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from torch import nn

pytest.importorskip("triton", reason="the fused kernels need triton")

from fastflow.errors import ShapeError  # noqa: E402
from fastflow.fused import (  # noqa: E402
    FusedGroupNorm,
    attention,
    attention_ref,
    group_norm,
    group_norm_ref,
    runtime,  # noqa: E402
    swap,
)
from fastflow.models import build_model  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu" and not runtime.interpreting():
    pytest.skip("without CUDA the kernels need TRITON_INTERPRET=1 (set by conftest.py)", allow_module_level=True)

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float16: dict(atol=4e-3, rtol=4e-3),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
GRAD_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=2e-2, rtol=1e-2),
            torch.bfloat16: dict(atol=1e-1, rtol=5e-2)}


@pytest.fixture
def poisoned(monkeypatch):
    """Every fresh allocation inside the ops is NaN-filled, so unwritten outputs show up."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))


def _leaves(*ts, dtype=None):
    return [None if t is None else t.detach().to(dtype or t.dtype).requires_grad_() for t in ts]


def _grads(out, leaves, dy):
    live = [t for t in leaves if t is not None]
    return torch.autograd.grad(out, live, dy)


GN_CASES = [  # (N, C, G, H, W): channels per group 10, 20, 3, 64; odd H·W; batch 1
    (2, 20, 2, 5, 7), (1, 40, 2, 9, 9), (3, 12, 4, 3, 5), (1, 64, 1, 4, 4), (2, 32, 16, 1, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", GN_CASES)
@pytest.mark.parametrize("variant", ["plain", "silu", "scale_shift_silu"])
def test_group_norm_kernel_matches_float64(dtype, layout, case, variant, poisoned) -> None:
    n, c, g, h, w = case
    x = (torch.randn(n, c, h, w) * 2 + 0.5).to(DEV, dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    weight, bias = torch.randn(c, device=DEV), torch.randn(c, device=DEV)
    mod = variant == "scale_shift_silu"
    scale = torch.randn(n, c, device=DEV, dtype=dtype) * 0.5 if mod else None
    shift = torch.randn(n, c, device=DEV, dtype=dtype) * 0.5 if mod else None
    silu = variant != "plain"
    dy = torch.randn(n, c, h, w, device=DEV, dtype=dtype)
    ref_in = _leaves(x, weight, bias, scale, shift, dtype=torch.float64)
    ref = group_norm_ref(ref_in[0], ref_in[1], ref_in[2], g, 1e-5, ref_in[3], ref_in[4], silu)
    ref_grads = _grads(ref, ref_in, dy.double())
    for split in (0, 2):  # automatic, and the split-reduction path forced
        ins = _leaves(x, weight, bias, scale, shift)
        y = group_norm(ins[0], ins[1], ins[2], g, 1e-5, ins[3], ins[4], silu, split=split)
        assert y.dtype == dtype and y.stride() == x.stride()  # same layout, no copy
        torch.testing.assert_close(y.double(), ref, **TOL[dtype])
        for got, want in zip(_grads(y, ins, dy), ref_grads, strict=True):
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got.double(), want, **GRAD_TOL[dtype])


def test_group_norm_statistics_are_stable_for_large_offsets() -> None:
    """fp32 statistics with tile-wise two-pass + Chan merge: a 1e4 offset does not cancel the variance."""
    x = (torch.randn(1, 8, 16, 16, device=DEV) * 1e-2 + 1e4)
    y = group_norm(x, None, None, 2, 1e-5, split=3)
    torch.testing.assert_close(y.double(), group_norm_ref(x.double(), None, None, 2, 1e-5), atol=2e-2, rtol=0)


ATTN_CASES = [  # (B, H, Lq, Lk, D)
    (2, 2, 33, 33, 40), (1, 3, 17, 77, 80), (2, 1, 20, 7, 24), (1, 2, 64, 64, 64), (1, 1, 9, 40, 160),
    (1, 2, 31, 31, 32)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", ATTN_CASES)
@pytest.mark.parametrize("layout", ["bhld", "blhd"])
def test_attention_kernel_matches_float64(dtype, case, layout, poisoned) -> None:
    b, h, lq, lk, d = case

    def make(length):
        if layout == "blhd":  # [B, L, H, D] transposed: strided, no copy
            return torch.randn(b, length, h, d, device=DEV, dtype=dtype).transpose(1, 2)
        return torch.randn(b, h, length, d, device=DEV, dtype=dtype)

    q, k, v = make(lq), make(lk), make(lk)
    scale = 0.7 / math.sqrt(d)
    do = torch.randn(b, h, lq, d, device=DEV, dtype=dtype)
    ref_in = _leaves(q, k, v, dtype=torch.float64)
    ref = attention_ref(*ref_in, scale)
    ins = _leaves(q, k, v)
    o = attention(*ins, scale=scale)
    assert o.dtype == dtype and o.shape == (b, h, lq, d)
    torch.testing.assert_close(o.double(), ref, **TOL[dtype])
    for got, want in zip(_grads(o, ins, do), _grads(ref, ref_in, do.double()), strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, **GRAD_TOL[dtype])


def test_fallbacks_warn_once_and_stay_correct(caplog) -> None:
    runtime._warned.clear()
    x = torch.randn(2, 8, 6, 6, device=DEV, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="fastflow.fused"):
        for _ in range(2):
            torch.testing.assert_close(group_norm(x, None, None, 2), group_norm_ref(x, None, None, 2))
        strided = torch.randn(2, 8, 6, 12, device=DEV)[..., :6]  # H·W does not flatten to one stride
        torch.testing.assert_close(group_norm(strided, None, None, 4, silu=True),
                                   group_norm_ref(strided, None, None, 4, silu=True))
        q = torch.randn(1, 1, 5, 264, device=DEV)
        torch.testing.assert_close(attention(q, q, q), attention_ref(q, q, q))
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("float64" in m for m in msgs) == 1 and sum("strides" in m for m in msgs) == 1
    assert sum("head dim 264" in m for m in msgs) == 1
    with pytest.raises(ShapeError):
        group_norm(torch.randn(2, 6, 4, 4, device=DEV), None, None, 4)
    with pytest.raises(ShapeError):
        group_norm(torch.randn(2, 8, 4, 4, device=DEV), None, None, 4, scale=torch.randn(8, device=DEV))
    with pytest.raises(ShapeError):
        attention(torch.randn(1, 2, 4, 8, device=DEV), torch.randn(1, 2, 5, 8, device=DEV),
                  torch.randn(1, 2, 6, 8, device=DEV))


@pytest.mark.skipif(DEV != "cpu", reason="bf16 through the interpreter is a CPU-only limitation")
def test_bf16_under_the_interpreter_falls_back(caplog) -> None:
    runtime._warned.clear()
    x = torch.randn(1, 4, 3, 3, dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger="fastflow.fused"):
        torch.testing.assert_close(group_norm(x, None, None, 2), group_norm_ref(x, None, None, 2))
    assert any("bfloat16" in r.getMessage() for r in caplog.records)


def test_ops_pass_torch_library_opcheck() -> None:
    """Schema, fake tensors and the autograd registration of both ops."""
    from fastflow.fused.attention import attention_fwd
    from fastflow.fused.groupnorm import group_norm_fwd

    x = torch.randn(2, 8, 3, 5, device=DEV, requires_grad=True)
    w, b = torch.randn(8, device=DEV, requires_grad=True), torch.randn(8, device=DEV, requires_grad=True)
    s = torch.randn(2, 8, device=DEV, requires_grad=True)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(group_norm_fwd, (x, w, b, s, None, 2, 1e-5, True, 0), test_utils=tests)
    q = torch.randn(1, 2, 5, 16, device=DEV, requires_grad=True)
    k = torch.randn(1, 2, 7, 16, device=DEV, requires_grad=True)
    torch.library.opcheck(attention_fwd, (q, k, k.detach().clone().requires_grad_(), 0.25), test_utils=tests)


def test_raw_ops_refuse_cpu_without_the_interpreter(monkeypatch) -> None:
    """The torch.ops kernels are kernel-only; the public functions are what route CPU to the reference."""
    from fastflow.errors import MissingBackendError
    from fastflow.fused.attention import attention_fwd
    from fastflow.fused.groupnorm import group_norm_fwd

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, q = torch.randn(1, 4, 2, 2), torch.randn(1, 1, 3, 16)
    with pytest.raises(MissingBackendError, match="fastflow.fused.group_norm"):
        group_norm_fwd(x, None, None, None, None, 2, 1e-5, False, 0)
    with pytest.raises(MissingBackendError, match="fastflow.fused.attention"):
        attention_fwd(q, q, q, 0.25)
    torch.testing.assert_close(group_norm(x, None, None, 2), group_norm_ref(x, None, None, 2))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(4, 8))
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.seq(x)


def test_swap_sequential_groupnorm_silu_and_report() -> None:
    m = _Block().to(DEV)
    f = copy.deepcopy(m)
    report = swap(f)
    assert isinstance(f.seq[0], FusedGroupNorm) and f.seq[0].silu and isinstance(f.seq[1], nn.Identity)
    assert isinstance(f.seq[3], FusedGroupNorm) and not f.seq[3].silu
    assert [n for n, *_ in report.left] == ["mha"] and len(report.swapped) == 3
    assert "nn.MultiheadAttention" in str(report)
    f.load_state_dict(m.state_dict())  # nn.GroupNorm state dicts load unchanged
    x = torch.randn(2, 8, 5, 6, device=DEV)
    torch.testing.assert_close(f(x), m(x), **TOL[torch.float32])


@pytest.mark.parametrize("preset", ["tiny"])
def test_swapped_unet_matches_original_outputs_and_gradients(preset) -> None:
    torch.manual_seed(0)
    m = build_model({"preset": preset, "num_classes": 3}).to(DEV)
    for p in m.parameters():  # the output conv is zero-initialised; make every path count
        nn.init.normal_(p, std=0.2)
    f = copy.deepcopy(m)
    report = swap(f)
    kinds = {now for _, _, now in report.swapped}
    assert "FusedAttention" in kinds and "FusedGroupNorm(silu=True)" in kinds and not report.left
    x, t, c = torch.randn(2, 3, 8, 8, device=DEV), torch.rand(2, device=DEV), torch.tensor([0, 2], device=DEV)
    y0, y1 = m(x, t, c), f(x, t, c)
    torch.testing.assert_close(y1, y0, atol=1e-4, rtol=1e-4)
    y0.square().mean().backward()
    y1.square().mean().backward()
    for (name, p0), p1 in zip(m.named_parameters(), f.parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p0.grad, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.slow  # ~50 s; the fused diffusers training-step test stays in make test
def test_swap_diffusers_unet_through_processors() -> None:
    pytest.importorskip("diffusers", reason="diffusers not installed")
    from helpers import tiny_diffusers_unet

    unet = tiny_diffusers_unet().to(DEV).eval()
    fused = copy.deepcopy(unet)
    report = swap(fused)
    procs = [now for _, _, now in report.swapped if now == "FusedAttnProcessor"]
    n_attn = sum(type(m).__name__ == "Attention" for m in unet.modules())
    assert len(procs) == n_attn == 8  # self + cross in 1 down, 2 up and 1 mid transformer layers
    assert any(now.startswith("FusedGroupNorm") for _, _, now in report.swapped)
    x, emb = torch.randn(2, 4, 8, 8, device=DEV), torch.randn(2, 77, 24, device=DEV)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, 10, emb).sample, unet(x, 10, emb).sample, atol=2e-4, rtol=2e-4)


def test_reference_path_compiles_fullgraph_on_cpu(monkeypatch) -> None:
    """On CPU (no interpreter) the modules take the reference, and torch.compile(fullgraph) traces it."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    m = nn.Sequential(FusedGroupNorm(2, 8, silu=True), nn.Conv2d(8, 8, 1))
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), m(x))


def test_swapped_unet_exports_with_its_kernels() -> None:
    """What was swapped in is what an export carries (no flag around the export decides): the
    program calls the fastflow ops and equals eager; an unswapped model exports the reference."""
    m = build_model({"preset": "tiny"}).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    assert "fastflow" not in str(torch.export.export(m, (x, t)).graph)
    swap(m)
    ep = torch.export.export(m, (x, t))
    assert "torch.ops.fastflow" in str(ep.graph)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x, t), m(x, t), atol=1e-4, rtol=1e-4)


def test_attention_autotune_key_is_bucketed() -> None:
    """Lengths in one power-of-two bucket share the autotune key (no re-tune per new length)."""
    from fastflow.fused.attention import _meta

    def key(lq, lk, d=40, dtype=torch.float16):
        return _meta(torch.empty(1, 1, lq, d, dtype=dtype), torch.empty(1, 1, lk, d, dtype=dtype))

    assert key(33, 77) == key(64, 128) == key(40, 100)
    assert key(65, 77) != key(64, 77) and key(33, 77, d=80) != key(33, 77)
    assert (key(33, 77)["BLOCK_D0"], key(33, 77)["BLOCK_D1"]) == (32, 16)


@pytest.mark.parametrize("d, parts", [(160, (128, 32)), (80, (64, 16)), (40, (32, 16)), (96, (64, 32)),
                                      (64, (64, 0)), (24, (32, 0)), (100, (128, 0)), (256, (256, 0))])
def test_head_dim_split_does_the_dot_work_of_the_head_dim(d, parts) -> None:
    """Per (BLOCK_M × BLOCK_N) tile the forward issues 4·BM·BN·(D0 + D1) FLOPs (QKᵀ and PV): with
    the split that is the real head dim for 80/96/160 (padding to 256 did 60 % more work at 160)."""
    from fastflow.fused.attention import head_dim_parts

    assert head_dim_parts(d) == parts
    d0, d1 = parts
    assert d0 & (d0 - 1) == 0 and (d1 == 0 or d1 & (d1 - 1) == 0) and min(d0, d1 or 16) >= 16
    assert d <= d0 + d1 <= max(16, 1 << (d - 1).bit_length())  # never more than padding
    bm = bn = 64
    if d in (80, 96, 160):
        assert 4 * bm * bn * (d0 + d1) == 4 * bm * bn * d


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_large_shapes_bf16(dtype) -> None:
    x = torch.randn(2, 640, 64, 64, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
    w, b = torch.randn(640, device="cuda"), torch.randn(640, device="cuda")
    s = torch.randn(2, 640, device="cuda", dtype=dtype) * 0.3
    torch.testing.assert_close(group_norm(x, w, b, 32, 1e-5, s, s, True).double(),
                               group_norm_ref(x.double(), w.double(), b.double(), 32, 1e-5, s.double(), s.double(),
                                              True),
                               **TOL[dtype])
    for d, lk in ((40, 4096), (80, 1024), (160, 256), (64, 77), (128, 4096)):
        q = torch.randn(2, 8, 4096 if d != 160 else 256, d, device="cuda", dtype=dtype)
        k = torch.randn(2, 8, lk, d, device="cuda", dtype=dtype)
        v = torch.randn(2, 8, lk, d, device="cuda", dtype=dtype)
        torch.testing.assert_close(attention(q, k, v).double(), attention_ref(q.double(), k.double(), v.double()),
                                   **TOL[dtype])


@pytest.mark.gpu
def test_gpu_compiled_unet_with_kernels_fullgraph() -> None:
    m = build_model({"preset": "slim-3.4m"}).cuda()
    swap(m)
    x, t = torch.randn(4, 3, 32, 32, device="cuda"), torch.rand(4, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m, fullgraph=True)(x, t), m(x, t), atol=1e-3, rtol=1e-3)


def test_bench_kernels_plumbing(tmp_path) -> None:
    """`fastflow bench kernels --quick` under the interpreter: the JSON has every row and the summary
    (timings through the interpreter mean nothing); without a GPU or --quick it refuses clearly."""
    import json

    from tests.helpers import run_cli

    out = tmp_path / "k.json"
    r = run_cli("bench", "kernels", "--quick", "--dtype", "fp32", "--out", str(out), "--device", DEV)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert len(res["group_norm"]) == 2 and len(res["attention"]) == 2
    assert {"fused_GBps", "speedup_vs_eager", "fraction_of_copy_bw"} <= set(res["group_norm"][0])
    assert "fused_TFLOPs" in res["attention"][0] and "gn_speedup_vs_eager_geomean" in res["summary"]
    assert res["ceilings"]["copy_GBps"] > 0 and res["ceilings"]["matmul_TFLOPs"] > 0
    b, h, lq, lk, d = res["attention"][0]["shape"]
    row = res["attention"][0]
    assert row["flops"] == 4 * b * h * lq * lk * d and row["bytes"] == (2 * b * h * lq * d + 2 * b * h * lk * d) * 4
    expect = max(
        row["flops"] / (res["ceilings"]["matmul_TFLOPs"] * 1e9), row["bytes"] / (res["ceilings"]["copy_GBps"] * 1e6)
    )
    assert row["lower_bound_ms"] == pytest.approx(expect) and row["fraction_of_bound"] > 0
    if DEV == "cpu":
        r = run_cli("bench", "kernels", "--out", str(out), "--device", "cpu")
        assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr


def _empty_refs():
    return [
        (
            "gn batch 0",
            lambda: group_norm(torch.randn(0, 8, 4, 4), None, None, 2),
            lambda: nn.GroupNorm(2, 8, affine=False)(torch.randn(0, 8, 4, 4)),
        ),
        ("gn spatial 0", lambda: group_norm(torch.randn(2, 8, 0, 4), None, None, 2), lambda: torch.empty(2, 8, 0, 4)),
        (
            "attn no keys",
            lambda: attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 0, 8), torch.randn(1, 2, 0, 8)),
            lambda: attention_ref(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 0, 8), torch.randn(1, 2, 0, 8)),
        ),
        (
            "attn no queries",
            lambda: attention(torch.randn(1, 2, 0, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)),
            lambda: torch.empty(1, 2, 0, 8),
        ),
    ]


@pytest.mark.parametrize("case", range(4), ids=[c[0] for c in _empty_refs()])
def test_empty_inputs_follow_the_reference(case) -> None:
    _, got, want = _empty_refs()[case]
    g, w = got(), want()
    assert g.shape == w.shape and torch.equal(torch.nan_to_num(g, 7.0), torch.nan_to_num(w, 7.0))


@pytest.mark.parametrize("call, error", [
    (lambda: FusedGroupNorm(0, 8), "do not split"),
    (lambda: FusedGroupNorm(3, 8), "do not split"),
    (lambda: group_norm(torch.randn(2, 8, 4, 4), None, None, 0), "groups >= 1"),
    (lambda: group_norm(torch.ones(2, 8, 4, 4, dtype=torch.int64), None, None, 2), "floating-point"),
    (lambda: attention(*(torch.randn(1, 2, 4, 0) for _ in range(3))), "head dim >= 1"),
    (lambda: attention(*(torch.ones(1, 2, 4, 8, dtype=torch.int32) for _ in range(3))), "floating-point"),
], ids=["groups-0", "groups-3-of-8", "fn-groups-0", "gn-int", "head-dim-0", "attn-int"])
def test_degenerate_arguments_raise_typed_errors(call, error) -> None:
    from fastflow.errors import DTypeError, ShapeError

    with pytest.raises((ShapeError, DTypeError), match=error):
        call()
