"""pytest-benchmark: fused GroupNorm+SiLU vs eager, fused attention vs SDPA (GPU only).

GB/s (GroupNorm) and TFLOP/s (attention) go to ``extra_info``. The full shape sweep with every
SDPA backend and the target summary is ``fastflow bench kernels`` (JSON under benchmarks/results/).
"""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="the fused kernels need triton")

from fastflow.fused import attention, group_norm  # noqa: E402

pytestmark = pytest.mark.gpu
GN = [(1, 320, 64, 64), (2, 640, 32, 32), (16, 96, 32, 32), (128, 192, 16, 16)]
ATTN = [(2, 8, 4096, 4096, 40), (2, 8, 1024, 1024, 80), (2, 8, 256, 256, 160), (2, 8, 1024, 1024, 64),
        (2, 8, 4096, 77, 40)]


def _sync(fn):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


@pytest.mark.parametrize("impl", ["fused", "eager"])
@pytest.mark.parametrize("shape", GN, ids=lambda s: "x".join(map(str, s)))
def test_group_norm_silu(benchmark, shape, impl) -> None:
    x = torch.randn(*shape, device="cuda", dtype=torch.float16)
    w, b = torch.randn(shape[1], device="cuda"), torch.randn(shape[1], device="cuda")
    fn = (lambda: group_norm(x, w, b, 32, 1e-5, silu=True)) if impl == "fused" else \
        (lambda: F.silu(F.group_norm(x, 32, w.half(), b.half(), 1e-5)))
    fn()
    benchmark(_sync(fn))
    benchmark.extra_info.update(device=torch.cuda.get_device_name(), impl=impl,
                                GBps=2 * x.numel() * x.element_size() / benchmark.stats["median"] / 1e9)


@pytest.mark.parametrize("impl", ["fused", "sdpa"])
@pytest.mark.parametrize("shape", ATTN, ids=lambda s: "x".join(map(str, s)))
def test_attention(benchmark, shape, impl) -> None:
    b, h, lq, lk, d = shape
    q = torch.randn(b, h, lq, d, device="cuda", dtype=torch.float16)
    k, v = torch.randn(b, h, lk, d, device="cuda", dtype=torch.float16), torch.randn(b, h, lk, d, device="cuda",
                                                                                      dtype=torch.float16)
    fn = (lambda: attention(q, k, v)) if impl == "fused" else (lambda: F.scaled_dot_product_attention(q, k, v))
    fn()
    benchmark(_sync(fn))
    benchmark.extra_info.update(device=torch.cuda.get_device_name(), impl=impl,
                                TFLOPs=4 * b * h * lq * lk * d / benchmark.stats["median"] / 1e12)
