"""The int8 CPU block kernel (``fastflow.fused.cpu_block_q8``): the weight packing on a closed-form case; the
op against its PyTorch reference (the same quantisation, the integer convolution in float64) over every
option and layout of the fp32 kernel's cases, 1 and 2 threads; its error against the fp32 kernel within a
stated bound; typed errors; the module swap on a UNet; and both code paths — this CPU's (VNNI where it has
it) and an AVX2-only build (``maddubs``, 127 levels) in a subprocess."""

import subprocess
import sys

import pytest
import torch
from fuzz import examples
from helpers import ROOT
from hypothesis import assume, given
from hypothesis import strategies as st
from test_cpu_block import CASES, _case

from fastflow.errors import DTypeError, ShapeError
from fastflow.fused import cpu_block_q8 as q8
from fastflow.fused.cpu_block import conv_block, swap_cpu_blocks
from fastflow.models import build_model
from fastflow.models.layers import resample2x
from fastflow.models.reference import group_norm_ref

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
#: relative L2 error of the int8 block against the fp32 kernel that the tests hold it to (255 levels; 127: ×2)
INT8_REL_ERROR = 0.03


def test_quantize_weight_closed_form() -> None:
    """Per output channel ``max|w| / 127``; input channels padded to 4 and packed four to a lane."""
    w = torch.zeros(2, 5, 1, 1)
    w[0, :, 0, 0] = torch.tensor([1.0, -0.5, 0.25, 0.0, 2.54])
    q, s = q8.quantize_weight(w)
    assert q.dtype == torch.int8 and q.shape == (2, 2, 1, 4) and s.tolist() == pytest.approx([0.02, 1.0])
    assert q[0].flatten().tolist() == [50, -25, 12, 0, 127, 0, 0, 0]  # 0.25 / 0.02 = 12.5 → 12 (half to even)
    assert q[1].abs().sum() == 0
    w = torch.randn(7, 6, 3, 3)
    back = q8.dequantize_weight(*q8.quantize_weight(w), cin=6)
    assert float((back - w.double()).abs().max()) <= float(w.abs().max()) / 127 / 2 + 1e-7


def _q8_args(name: str, seed: int) -> dict:
    args = _case(**CASES[name], seed=seed)
    qweight, w_scale = q8.quantize_weight(args.pop("weight"))
    return {"qweight": qweight, "w_scale": w_scale, **args}


def _quantum(args: dict, levels: int) -> float:
    """The largest output change one activation moving by one level can make: s · max w_scale · 127."""
    norm, x = args["norm"], args["x"]
    if norm is not None:
        a = group_norm_ref(x, norm[0], norm[1], norm[2], norm[3], args["scale"], args["shift"], args["act"])
    else:
        a = torch.nn.functional.silu(x) if args["act"] else x
    a = resample2x(a, args["resample"]).flatten(1)
    s = float((a.amax(1).clamp(min=0) - a.amin(1).clamp(max=0)).max()) / levels
    return s * float(args["w_scale"].max()) * 127 * args["out_scale"]


def _check_against_reference(name: str, seed: int, levels: int | None = None) -> None:
    """The kernel equals its reference but where the prologue's float arithmetic (the kernel's polynomial
    exp, its summation order) puts an activation on the other side of a rounding boundary: rare (mean error
    a tenth of a quantum), and then one level (at most two quanta anywhere)."""
    levels = levels or q8.int8_levels()
    args = _q8_args(name, seed)
    got = q8.conv_block_q8(**args)
    want = q8.conv_block_q8_ref(**args, levels=levels)
    assert got.dtype == torch.float32 and got.shape == want.shape
    err, quantum = (got - want).abs(), _quantum(args, levels)
    assert float(err.max()) <= 2 * quantum + 1e-5 and float(err.mean()) <= 0.1 * quantum + 1e-6, name


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(CASES))
def test_conv_block_q8_matches_its_reference(name, threads) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed in (0, 1):
            _check_against_reference(name, seed)
    finally:
        torch.set_num_threads(before)


@examples(25)
@given(n=st.integers(1, 3), cin=st.integers(1, 20), cout=st.integers(1, 20), h=st.integers(1, 6),
       w=st.integers(1, 18), k=st.sampled_from([1, 3]), resample=st.sampled_from([None, "up", "down"]),
       norm=st.booleans(), modulate=st.booleans(), seed=st.integers(0, 2**16))
def test_any_shape_matches_the_reference(n, cin, cout, h, w, k, resample, norm, modulate, seed) -> None:
    """Property: over channel counts (not multiples of 4 included), map sizes (every layout) and options, the
    kernel equals its reference (within one activation quantum where the SiLU rounds differently)."""
    h, w = (2 * h, 2 * w) if resample == "down" else (h, w)
    assume(not norm or (cin // (4 if cin % 4 == 0 else 1)) * h * w > 1)  # PyTorch's GroupNorm needs 2 values
    CASES["_drawn"] = dict(n=n, cin=cin, cout=cout, h=h, w=w, k=k, resample=resample, norm=norm,
                           modulate=modulate and norm)
    try:
        _check_against_reference("_drawn", seed)
    finally:
        del CASES["_drawn"]


@pytest.mark.parametrize("name", ["gn-silu", "odd-channels-pixels", "up", "down", "split-channels", "1x1-flat",
                                  "im2col-partial"])
def test_int8_error_against_the_fp32_kernel_is_bounded(name) -> None:
    args = _case(**CASES[name], seed=3)
    want = conv_block(**args)
    qweight, w_scale = q8.quantize_weight(args.pop("weight"))
    got = q8.conv_block_q8(qweight=qweight, w_scale=w_scale, **args)
    bound = INT8_REL_ERROR * (1 if q8.int8_levels() == 255 else 2)
    assert float((got - want).norm() / want.norm()) <= bound


def test_one_and_two_threads_agree_bitwise() -> None:
    args = _q8_args("split-channels", 0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = q8.conv_block_q8(**args)
        torch.set_num_threads(2)
        two = q8.conv_block_q8(**args)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_conv_block_q8_refuses_bad_input() -> None:
    args = _q8_args("gn-silu", 0)
    with pytest.raises(DTypeError, match="int8"):
        q8.conv_block_q8(**{**args, "qweight": args["qweight"].float()})
    with pytest.raises(DTypeError, match="float32"):
        q8.conv_block_q8(**{**args, "x": args["x"].double()})
    with pytest.raises(ShapeError, match="qweight"):
        q8.conv_block_q8(**{**args, "qweight": args["qweight"][:, :1]})
    with pytest.raises(ShapeError, match="bias"):
        q8.conv_block_q8(**{**args, "bias": args["bias"][:3]})
    with pytest.raises(ShapeError, match="quantize_weight"):
        q8.quantize_weight(torch.randn(4, 4, 2, 2))


def test_quantized_unet_stays_close_to_the_fp32_kernel() -> None:
    """``quantize_cpu_blocks`` after ``swap_cpu_blocks``: every ResBlock int8, state-dict keys unchanged,
    the velocity within the stated bound of the fp32-kernel model's."""
    torch.manual_seed(0)
    model = build_model({"preset": "digits-small", "num_classes": 10}).eval()
    with torch.no_grad():  # the output convolution starts at zero: weights of a trained model's size instead
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    keys = list(model.state_dict())
    swap_cpu_blocks(model)
    x, t, label = torch.randn(3, 1, 16, 16), torch.rand(3), torch.tensor([1, 4, 9])
    with torch.no_grad():
        want = model(x, t, label)
        report = q8.quantize_cpu_blocks(model)
        got = model(x, t, label)
    assert len(report.swapped) == sum(isinstance(m, q8.Q8ResBlock) for m in model.modules()) > 0
    assert list(model.state_dict()) == keys
    assert float((got - want).norm() / want.norm()) <= INT8_REL_ERROR


AVX2_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from fastflow.fused import cpu_block
cpu_block.load("haswell")
import torch
import test_cpu_block as fp32
import test_cpu_block_q8 as q8t
assert q8t.q8.int8_levels() == 127
for name in fp32.CASES:
    args = fp32._case(**fp32.CASES[name], seed=5)
    got, want = fp32.conv_block(**args), fp32.conv_block_ref(**fp32._f64(args))
    assert float((got.double() - want).abs().max()) <= 2e-5 * (1 + float(want.abs().max())), name
    q8t._check_against_reference(name, 5)
print("ok")
"""


@pytest.mark.slow  # ~20 s (a second build); on AVX2-only machines the default suite runs these paths natively
def test_the_avx2_build_computes_the_same() -> None:
    """The kernels built for AVX2 only (``-march=haswell``: 8-wide vectors, ``maddubs`` with 127 levels):
    fp32 against float64 and int8 against its reference, every case."""
    res = subprocess.run([sys.executable, "-c", AVX2_SCRIPT.format(tests=str(ROOT / "tests"))],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
