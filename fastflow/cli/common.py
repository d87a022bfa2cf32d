"""What every CLI entry point shares: a parser whose errors are one line, checked argument types,
``--threads``, and the error boundary.

The boundary turns *expected* failures into one line on stderr and exit 2: fastflow's typed
errors, OS errors on paths (missing, unwritable, a directory where a file is wanted, symlink
loops, a full disk) and running out of memory. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

from fastflow.cli.argtypes import device_arg, positive_int
from fastflow.errors import ConfigError, FastflowError
from fastflow.flow.solvers import SOLVERS
from fastflow.fused.switch import MODES as FUSED_MODES
from fastflow.utils.distributed import shutdown_distributed
from fastflow.utils.threads import THREADS_ENV, configure_threads

#: OS errors that are the user's path or machine, not a bug.
_PATH_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EROFS,
                errno.ENOSPC, errno.EDQUOT, errno.EEXIST, errno.ENAMETOOLONG, errno.EXDEV, errno.EBUSY, errno.EIO}


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in ``--help``, unless its help already says it or it is a plain switch."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or (action.nargs == 0 and action.default in (False, None)):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors (``PROG: error: …``, exit 2) instead of usage + error, and
    every option's default in ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Defaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_sampling_args(p: argparse.ArgumentParser, solver: str, steps: int) -> None:
    """The checkpoint argument, ``--solver`` and ``--steps`` of the verbs that sample a checkpoint."""
    p.add_argument("ckpt", help="checkpoint directory, or run directory (latest checkpoint)")
    p.add_argument("--solver", default=solver, choices=list(SOLVERS), help="ODE solver (one_step: x + (1 − ε)·v)")
    p.add_argument("--steps", type=positive_int, default=steps, help="steps for euler/heun/rk2")


FUSED_HELP = ("kernel path (fastflow.fused.apply): auto (the measured winner for this device kind and model size, "
              "else triton on CUDA + Triton and off elsewhere; one line says which and why), off, triton "
              "(Triton-fused GroupNorm/attention; on = triton; CPU only under TRITON_INTERPRET=1), cpu (the CPU "
              "block kernel in every fastflow UNet; inference, fp32 or with --quantize int8)")


def fused_mode(text: str) -> str:
    """``--fused``'s value: one of :data:`fastflow.fused.MODES` (``on`` = ``triton``)."""
    from fastflow.fused.switch import check_mode

    try:
        return check_mode(text, "--fused")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--fused ")) from None


def compile_arg(text: str) -> str:
    """``--compile``'s value: one of :data:`fastflow.train.accel.COMPILE_MODES`."""
    from fastflow.train.accel import compile_mode

    try:
        return compile_mode(text, "--compile")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--compile ")) from None


def add_fused_arg(p: argparse.ArgumentParser, extra: str = "") -> None:
    """``--fused {auto,off,triton,cpu}``: what :func:`fastflow.fused.apply` does to the model."""
    p.add_argument("--fused", default="auto", type=fused_mode, metavar="{" + ",".join(FUSED_MODES) + "}",
                   help=FUSED_HELP + extra)


def add_model_args(p: argparse.ArgumentParser, device: str | None = None, fused_extra: str = "") -> None:
    """``--weights``, ``--device`` and ``--fused``: which weights of a checkpoint, where and how to run them."""
    p.add_argument("--weights", default="ema", choices=["ema", "model"],
                   help="the checkpoint's EMA weights (falls back to model when it has none) or its raw weights")
    p.add_argument("--device", type=device_arg, default=device or default_device(),
                   help="cpu, cuda or cuda:N (default: %(default)s)")
    add_fused_arg(p, fused_extra)


def load_checkpoint(args: argparse.Namespace, fused: bool = True) -> tuple[Any, torch.nn.Module]:
    """The :class:`~fastflow.models.checkpoint.CheckpointRecord` of ``args.ckpt`` and its model
    (``--weights``) on ``--device``, with ``--fused`` applied (``fused=False``: as built)."""
    from fastflow.fused import apply
    from fastflow.models.checkpoint import load_model, read_record

    record = read_record(args.ckpt)
    model = load_model(record.path, weights=args.weights, device=args.device)
    if fused:
        apply(model, args.fused, args.device)
    return record, model


def add_version(p: argparse.ArgumentParser) -> None:
    """``--version``: fastflow's version and the torch it runs on."""
    from fastflow import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__} (torch {torch.__version__})")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=None,
                   help=f"CPU threads for PyTorch (default: ${THREADS_ENV}, else one core fewer than "
                        "this process may use, at least 1)")


#: upstream messages a user can do nothing about, kept out of the CLI's output: (logger, level)
QUIET_LOGGERS = (("torch.onnx._internal.exporter._registration", logging.ERROR),  # "torchvision is not installed"
                 ("torchao", logging.ERROR),  # "Failed to load …/_C_*.so" (torchao's CUDA extensions on a CPU torch)
                 ("torch.utils._pytree", logging.ERROR))  # torchao's register_constant() deprecation
#: upstream verbosity variables the CLI sets when the user has not: diffusers' and transformers' warnings
#: ("Unable to import `torchao` Tensor objects") and their weight loading/saving bars
QUIET_ENV = (("DIFFUSERS_VERBOSITY", "error"), ("TRANSFORMERS_VERBOSITY", "error"),
             ("HF_HUB_DISABLE_PROGRESS_BARS", "1"))
#: (category, message regex) of upstream warnings the CLI does not show
QUIET_WARNINGS = ((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),)


def quiet_upstream() -> None:
    """Silence :data:`QUIET_LOGGERS`, :data:`QUIET_ENV` and :data:`QUIET_WARNINGS` (the CLI only: library
    users keep them; a variable the user set wins)."""
    for name, value in QUIET_ENV:
        os.environ.setdefault(name, value)
    for name, level in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is at each record (a redirection or pytest may replace it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


class _Notice(logging.Formatter):
    """INFO records as their message; warnings and above as ``note: message`` (the run goes on)."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"note: {text}" if record.levelno >= logging.WARNING else text


def show_notices() -> None:
    """Show fastflow's library notices (``logging`` under ``fastflow``: INFO and above) on stderr, one line
    each (warnings as ``note: …``). Library users get Python's defaults (warnings only) and silence them with
    ``logging.getLogger("fastflow").setLevel(...)``; a level the user set wins."""
    logger = logging.getLogger("fastflow")
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(_Notice())
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def run_cli(prog: str, fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call ``fn(args)`` with the thread setting applied and upstream noise silenced, behind the error boundary."""
    try:
        quiet_upstream()
        show_notices()
        configure_threads(getattr(args, "threads", None))
        return fn(args)
    except FastflowError as e:
        return _fail(prog, str(e))
    except OSError as e:
        if e.errno not in _PATH_ERRNOS:
            raise
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        return _fail(prog, f"{where + ': ' if where else ''}{e.strerror or e}")
    except (MemoryError, torch.OutOfMemoryError) as e:
        return _fail(prog, f"out of memory ({_first_line(e) or 'MemoryError'}); use a smaller batch or --n")
    except RuntimeError as e:  # the CPU allocator raises a plain RuntimeError
        if "can't allocate memory" not in str(e):
            raise
        return _fail(prog, f"out of memory ({str(e).split('DefaultCPUAllocator: ')[-1].split('. Error')[0]}); "
                           "use a smaller batch or --n")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed()


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def rk45_bar() -> Callable[[int, int], None]:
    """A progress bar of RK45's batched calls (over all batches) with the samples still integrating:
    the ``progress`` hook of :func:`fastflow.flow.solvers.rk45` (a batch can take minutes on a CPU)."""
    from tqdm import tqdm

    bar, last = tqdm(desc="rk45", unit="call", leave=False), [0]

    def hear(nfe: int, active: int) -> None:
        bar.update(nfe - last[0] if nfe >= last[0] else nfe)  # a new batch starts its count again
        last[0] = nfe
        bar.set_postfix(active=active, refresh=False)
    return hear
