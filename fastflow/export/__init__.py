"""Export: :func:`export_checkpoint` (the one entry point: every format, the contract check,
validation, timing, the report) with its typed :class:`ExportOptions`; the generator wrappers;
``torch.compile`` and CUDA graphs."""

from fastflow.export.api import export_checkpoint
from fastflow.export.compile import CUDAGraphGenerator, compile_generator
from fastflow.export.generator import Generator
from fastflow.export.options import ExportOptions, ExportResult

__all__ = ["CUDAGraphGenerator", "ExportOptions", "ExportResult", "Generator", "compile_generator", "export_checkpoint"]
