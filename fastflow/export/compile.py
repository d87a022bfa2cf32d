"""``torch.compile`` of a generator and CUDA-graph capture of the static one-step sampler."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastflow.errors import MissingBackendError, ShapeError
from fastflow.export.generator import Generator


def compile_generator(model: nn.Module, steps: int = 1, mode: str = "max-autotune-no-cudagraphs",
                      fullgraph: bool = True) -> nn.Module:
    """``torch.compile`` of ``Generator(model, steps)`` (a velocity model is wrapped first)."""
    gen = model if isinstance(model, Generator) else Generator(model, steps)
    return torch.compile(gen, mode=mode, fullgraph=fullgraph)


class CUDAGraphGenerator:
    """Replays one captured forward of a generator at a fixed batch shape.

    ``__call__`` copies ``z`` into the static input, replays the graph and returns a **clone**
    of the static output, so later calls never overwrite results already handed out.
    """

    def __init__(self, gen: nn.Module, example: Tensor, warmup: int = 3) -> None:
        if not torch.cuda.is_available() or example.device.type != "cuda":
            raise MissingBackendError("CUDA-graph capture needs a CUDA device and a CUDA example input")
        self.static_in = example.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(warmup):
                gen(self.static_in)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.static_out = gen(self.static_in)

    def __call__(self, z: Tensor) -> Tensor:
        if z.shape != self.static_in.shape:
            raise ShapeError(f"captured for input shape {tuple(self.static_in.shape)}, got {tuple(z.shape)}")
        self.static_in.copy_(z)
        self.graph.replay()
        return self.static_out.clone()
