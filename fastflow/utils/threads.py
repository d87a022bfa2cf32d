"""How many CPU threads PyTorch uses: ``--threads``, else ``$FASTFLOW_THREADS``, else what
``$OMP_NUM_THREADS`` set (``torchrun`` sets 1 per rank), else one core fewer than this process may
run on (at least 1).

PyTorch's default (every core) collapses when anything else runs: its OpenMP pool waits at every
barrier for the thread whose core was taken. On the 2-core machines here a demo training step went
from ~0.2 s to several seconds next to one busy process, while one thread left the other core
free (measured in the README's "CPU threads" section). Leaving one core free keeps that headroom on
bigger machines too.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from fastflow.errors import ConfigError

THREADS_ENV = "FASTFLOW_THREADS"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: the x86 extensions that set a CPU's matrix-multiply rate (fp32 FMA width, int8 dot products, AMX tiles)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and its matrix-relevant extensions (from ``cpuinfo``; the platform name
    where there is none): results from machines that differ 2× in peak stay told apart."""
    try:
        first = cpuinfo.read_text().split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    info = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in first.splitlines() if ":" in ln)}
    flags = set(info.get("flags", "").split())
    isa = "+".join(f for f in ISA_FLAGS if f in flags)
    return f"{info.get('model name', platform.machine())}, {isa or 'no AVX2'}"


def device_name(device: torch.device) -> str:
    """What results files record as the device: the GPU's name, or the CPU (model, extensions) with the
    thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)"


def default_threads() -> int:
    return max(1, available_cores() - 1)


def check_threads(threads: int, source: str = "--threads") -> int:
    """``threads`` if between 1 and the cores this process may use, else :class:`ConfigError`
    (more threads than cores only slow PyTorch down, and a huge count crashes OpenMP)."""
    cores = available_cores()
    if not 1 <= threads <= cores:
        raise ConfigError(f"{source} must be between 1 and {cores} (the cores this process may use), got {threads}")
    return threads


def configure_threads(threads: int | None = None) -> int:
    """Set ``torch``'s intra-op thread count from the argument, the environment or the default."""
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        if raw:
            try:
                threads = int(raw)
            except ValueError:
                raise ConfigError(f"{THREADS_ENV}={raw!r} is not an integer") from None
            check_threads(threads, THREADS_ENV)
        elif os.environ.get("OMP_NUM_THREADS", "").strip():  # a launcher's or the user's choice
            return torch.get_num_threads()
        else:
            threads = default_threads()
    else:
        check_threads(threads)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads
