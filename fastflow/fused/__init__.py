"""Fused Triton kernels as drop-in modules: GroupNorm(+scale-shift, +SiLU) and attention.

Per op: a reference (``reference.py``), the Triton kernels with their ``torch.library``
registration (``groupnorm.py``, ``attention.py``), a function that picks one (``ops.py``) and a
module (``modules.py``). ``swap(model)`` puts the modules into a model and reports what changed.
Importing this package does not import Triton; the kernels load on first use.
"""

from fastflow.fused.modules import FusedAttention, FusedAttnProcessor, FusedGroupNorm
from fastflow.fused.ops import attention, group_norm
from fastflow.models.reference import attention_ref, group_norm_ref
from fastflow.fused.swap import SwapReport, swap

__all__ = ["FusedAttention", "FusedAttnProcessor", "FusedGroupNorm", "SwapReport", "attention", "attention_ref",
           "group_norm", "group_norm_ref", "swap"]
