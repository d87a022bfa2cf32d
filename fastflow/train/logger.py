"""Metrics logging: JSONL (always) and TensorBoard (when installed), rank 0 only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastflow.utils.io import atomic_write_text


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (none when it is missing; a line cut by a kill is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def truncate_log(path: Path, step: int) -> None:
    """Drop records past ``step`` (written after the checkpoint we resume from)."""
    if path.is_file():
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in read_log(path) if r.get("step", 0) <= step))


class Logger:
    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.path = run_dir / "log.jsonl"
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                self._tb = SummaryWriter(str(run_dir / "tb"))

    def log(self, step: int, values: dict[str, Any]) -> None:
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
