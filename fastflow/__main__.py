"""``python -m fastflow`` and the console scripts ``fastflow`` / ``fastflow-export``.

Ctrl-C while the CLI loads (torch, numpy: seconds) is held until the imports finish, then ends the
run with one line and exit 130: an interrupt let through mid-import leaves extension modules half
initialised (numpy then refuses to load again, other modules swallow it and fail later). During the
work, ``run_cli`` turns it into the same line. The exit goes through ``os._exit`` after the
``atexit`` handlers: a KeyboardInterrupt that surfaced inside code a C extension ran through
``PyRun_*`` marks itself unhandled even when caught, and CPython would then re-raise SIGINT at exit
(status −2, not 130)."""

import atexit
import importlib
import os
import signal
import sys


def _import_holding_sigint(module: str) -> tuple[object, bool]:
    """``module`` imported with SIGINT recorded, not raised; ``(module, interrupted)``."""
    hits: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # a launcher asked for SIGINT to be ignored
        return importlib.import_module(module), False
    signal.signal(signal.SIGINT, lambda *_: hits.append(1))
    try:
        return importlib.import_module(module), bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


def _guarded(prog: str, module: str) -> int:
    cli, interrupted = _import_holding_sigint(module)
    try:
        code = 130 if interrupted else cli.main()
    except KeyboardInterrupt:  # one that escaped run_cli (which prints the line itself)
        interrupted, code = True, 130
    if interrupted:
        print(f"{prog}: interrupted", file=sys.stderr)
    if code == 130:
        atexit._run_exitfuncs()  # temporary directories, loggers
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return code


def main() -> int:
    return _guarded("fastflow", "fastflow.cli.main")


def export_main() -> int:
    return _guarded("fastflow-export", "fastflow.cli.export")


if __name__ == "__main__":
    sys.exit(main())
