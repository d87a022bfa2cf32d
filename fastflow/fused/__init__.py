"""Fused Triton kernels as drop-in modules: GroupNorm(+scale-shift, +SiLU) and attention.

Per op: a reference (``reference.py``), the Triton kernels with their ``torch.library``
registration (``groupnorm.py``, ``attention.py``), a function that picks one (``ops.py``) and a
module (``modules.py``). ``swap(model)`` puts the modules into a model and reports what changed;
``apply(model, mode)`` is the one switch (``auto``/``off``/``triton``/``cpu``) every path that runs a model calls.
Importing this package does not import Triton; the kernels load on first use.

``cpu_block`` is the CPU counterpart for small students at small batches: a C++ op fusing a UNet
block's GroupNorm + SiLU + resampling + convolution + embedding + residual (inference, fp32), put
into a model by ``cpu_block.swap_cpu_blocks`` and into packages by ``fastflow-export --fused cpu``
(both through ``apply(model, "cpu")``).
"""

from fastflow.fused.modules import FusedAttention, FusedAttnProcessor, FusedGroupNorm
from fastflow.fused.ops import attention, group_norm
from fastflow.fused.swap import SwapReport, swap
from fastflow.fused.switch import MODES, FusedDecision, apply, check_mode, decide, is_fused, is_swapped, split_spec
from fastflow.models.reference import attention_ref, group_norm_ref

__all__ = [
    "MODES",
    "FusedAttention",
    "FusedAttnProcessor",
    "FusedDecision",
    "FusedGroupNorm",
    "SwapReport",
    "apply",
    "attention",
    "attention_ref",
    "check_mode",
    "decide",
    "group_norm",
    "group_norm_ref",
    "is_fused",
    "is_swapped",
    "split_spec",
    "swap",
]
