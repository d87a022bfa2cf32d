"""A rehearsal of ``benchmarks/cpu_block_ops.py``: every shape times both kernels and records its work."""

import sys

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import cpu_block_ops  # noqa: E402


def test_every_shape_times_both_kernels() -> None:
    rows = cpu_block_ops.measure([1], iters=2)
    assert [(r["batch"], r["channels"], r["size"]) for r in rows] == list(cpu_block_ops.SHAPES)
    assert all(r["fp32_us"] > 0 and r["int8_us"] > 0 and r["gop"] > 0 for r in rows)
