"""Which autotune configs a kernel may choose on the running GPU: configs that would spill
registers or overflow shared memory there are pruned before autotuning (placeholder: keeps all)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import triton

from fastflow.fused.runtime import interpreting


def attention_pruner(kernel: str) -> Callable[..., list[triton.Config]]:
    def prune(configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any) -> list[triton.Config]:
        return configs
    return prune
