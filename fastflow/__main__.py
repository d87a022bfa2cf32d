"""``python -m fastflow`` and the console scripts ``fastflow`` / ``fastflow-export``.

The entry points import nothing heavy before guarding Ctrl-C: an interrupt while torch and the
CLI load (seconds) is one line and exit 130, like one during the work itself."""

import sys


def _guarded(prog: str, module: str) -> int:
    try:
        import importlib

        return importlib.import_module(module).main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main() -> int:
    return _guarded("fastflow", "fastflow.cli.main")


def export_main() -> int:
    return _guarded("fastflow-export", "fastflow.cli.export")


if __name__ == "__main__":
    sys.exit(main())
