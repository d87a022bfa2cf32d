"""Benchmarks behind ``fastflow bench`` and ``benchmarks/``: latency suites, kernels, code generation,
threads. The timing primitive they share is :mod:`fastflow.utils.timing`."""
