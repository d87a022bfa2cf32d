"""Floating-point dtypes as fastflow's flags, configs and artefacts spell them."""

from __future__ import annotations

import torch

#: name → dtype (``--dtype``, ``fastflow.dtype`` metadata, codegen rows)
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

__all__ = ["DTYPES"]
