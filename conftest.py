"""Shared by tests/ and benchmarks/: tests marked ``gpu`` are skipped without CUDA, and without
CUDA the Triton kernels run on CPU tensors through Triton's interpreter (set before any kernel
is defined)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
