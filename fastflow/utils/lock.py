"""One writer per output directory: an advisory lock on ``DIR/.lock``.

The lock is ``flock(2)`` on a file that records its holder (pid, host, start time, command); a
clean exit (an error or Ctrl-C included) removes the file. The kernel drops the lock when the holder
dies in any way (``kill -9`` included), so a lock file left by a killed run is *stale*: the next run
takes it over and says whose it was. A second process while the holder lives gets
:class:`~fastflow.errors.LockedError` naming the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastflow.errors import LockedError

LOCK_NAME = ".lock"


def _holder(text: str) -> str:
    try:
        h = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(h["started"])))
        return f"pid {int(h['pid'])} on {h['host']} since {since} ({h['command']})"
    except (ValueError, KeyError, TypeError):
        return "a process that left no readable record"


@contextmanager
def directory_lock(directory: str | Path, what: str, enabled: bool = True) -> Iterator[None]:
    """Hold ``directory``'s lock (creating the directory) for the ``with`` body; ``what`` names the
    work in messages (``training``, ``pair generation``). ``enabled=False`` (ranks other than 0 of
    a torchrun job, which rank 0's lock covers) does nothing."""
    if not enabled:
        yield
        return
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    fd, previous = _acquire(d / LOCK_NAME, d, what)
    try:
        if previous.strip():
            print(f"note: {d}: taking over the lock of an earlier run that did not release it "
                  f"({_holder(previous)}: killed or crashed)", file=sys.stderr)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "command": what}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        yield
    finally:
        Path(d / LOCK_NAME).unlink(missing_ok=True)  # while still locked: a waiter then sees a removed file
        os.close(fd)  # closing drops the flock


def _acquire(path: Path, d: Path, what: str) -> tuple[int, str]:
    """``(fd, earlier record)`` with ``path`` flock-ed. Retried when the file was removed or replaced
    between our open and our lock (its holder released it meanwhile)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise LockedError(f"{d} is in use: {what} by {holder}; wait for it to finish or choose another "
                              "directory") from None
        mine = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return fd, os.pread(fd, 4096, 0).decode(errors="replace")
        os.close(fd)


__all__ = ["LOCK_NAME", "directory_lock"]
