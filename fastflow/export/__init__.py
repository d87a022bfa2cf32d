"""Export: the generator wrapper, artefact formats (ONNX, AOTInductor .pt2, torch.export .ep,
TensorRT), validation against PyTorch, ``torch.compile`` and CUDA graphs."""

from fastflow.export.compile import CUDAGraphGenerator, compile_generator
from fastflow.export.generator import Generator

__all__ = ["CUDAGraphGenerator", "Generator", "compile_generator"]
