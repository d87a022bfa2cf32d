"""Which autotune configs an attention kernel may choose on the running GPU.

Before autotuning, each kernel's config list is pruned for the GPU's arch (``sm_XY`` from Triton's
active driver) and the head-dim tiles ``D0 + D1``:

- **shared memory**: :func:`attention_smem` (the staged K/V or Q/dO tiles plus the resident
  ones; never below what Triton allocates, checked by ``fastflow bench codegen``) must fit the
  arch's per-block limit;
- **registers** (fp16/bf16): the config must be in ``spill_free.json``, the configs that compiled
  without a register spill for that kernel, arch and head-dim tiles in every specialisation of
  our shape set (``fastflow bench codegen --all-configs --table``; re-generate it when a kernel
  or the config list changes). ptxas's register allocation is not monotone in the tile sizes
  (at head dim 160 on sm_80 every dK/dV config but two spills), so this is measured, not modelled.
  A head dim between tabled ones takes the next larger tabled entry; an arch takes the nearest
  lower measured one. fp32 is not pruned for spills (reported by the codegen bench).

When nothing survives, the config with the smallest tiles is kept (a kernel must launch).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import triton

from fastflow.fused.runtime import interpreting
from fastflow.utils.io import read_json

TABLE = Path(__file__).with_name("spill_free.json")
#: Max dynamic shared memory per block (opt-in), bytes, by compute capability.
SHARED_LIMIT = {75: 65536, 80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


def attention_configs(bwd: bool = False) -> list[triton.Config]:
    """The attention kernels' autotune configs (one tiny config under the interpreter)."""
    if interpreting():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    sizes = [(128, 64, 8, 2), (64, 128, 8, 2), (64, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2),
             (32, 64, 8, 2), (16, 64, 4, 2)] if bwd \
        else [(128, 128, 8, 2), (128, 64, 8, 2), (128, 64, 4, 3), (64, 128, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in sizes]


def shared_limit(arch: int) -> int:
    return SHARED_LIMIT[max((a for a in SHARED_LIMIT if a <= arch), default=min(SHARED_LIMIT))]


def config_label(cfg: triton.Config) -> str:
    """``BLOCK_M=64,BLOCK_N=32,w4,s2``: how configs are named in the table and the codegen JSON."""
    return ",".join(f"{k}={v}" for k, v in sorted(cfg.kwargs.items())) + f",w{cfg.num_warps},s{cfg.num_stages}"


def attention_smem(kernel: str, cfg: triton.Config, head: int, elem: int) -> int:
    """Upper estimate of the shared memory a config needs: ``stages`` copies of the streamed
    tiles (K, V in the forward and dQ kernels; Q, dO and the row statistics in dK/dV) plus the
    tiles held for the whole loop (Q; Q and dO; K and V)."""
    bm, bn, st = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_stages
    if kernel == "fwd":
        return st * 2 * bn * head * elem + bm * head * elem
    if kernel == "dq":
        return st * 2 * bn * head * elem + 2 * bm * head * elem
    return st * (2 * bm * head * elem + 8 * bm) + 2 * bn * head * elem


@cache
def _table() -> dict[str, Any]:
    return read_json(TABLE) if TABLE.is_file() else {}


def spill_free(kernel: str, arch: int, head: int) -> set[str] | None:
    """Config labels measured spill-free (fp16 and bf16) for this kernel at the nearest lower
    measured arch and the next larger measured head-dim tiles; None without a measurement."""
    by_arch = _table().get(kernel, {})
    archs = sorted(int(a) for a in by_arch if int(a) <= arch)
    if not archs:
        return None
    by_head = by_arch[str(archs[-1])]
    heads = sorted(int(h) for h in by_head)
    pick = next((h for h in heads if h >= head), heads[-1] if heads else None)
    return None if pick is None else set(by_head[str(pick)])


def current_arch() -> int:
    """The active Triton target's compute capability (a real GPU, or the codegen stand-in)."""
    return int(triton.runtime.driver.active.get_current_target().arch)


def attention_pruner(kernel: str) -> Callable[..., list[triton.Config]]:
    """``early_config_prune`` for one of the attention kernels (``fwd``, ``dq``, ``dkdv``)."""

    def prune(configs: list[triton.Config], named_args: dict[str, Any], **meta: Any) -> list[triton.Config]:
        if interpreting():
            return configs
        arch = current_arch()
        head = meta["BLOCK_D0"] + meta["BLOCK_D1"]
        elem = named_args["Q"].element_size()
        fits = [c for c in configs if attention_smem(kernel, c, head, elem) <= shared_limit(arch)]
        allowed = spill_free(kernel, arch, head) if elem == 2 else None
        chosen = [c for c in fits if allowed is None or config_label(c) in allowed]
        smallest = min(fits or configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], -c.num_warps))
        return chosen or [smallest]

    return prune
