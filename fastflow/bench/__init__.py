"""Timing utilities shared by the CLI, the demo and benchmarks/."""

from fastflow.bench.timing import Latency, measure_latency

__all__ = ["Latency", "measure_latency"]
