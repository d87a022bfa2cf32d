"""One writer per output directory: an advisory lock on ``DIR/.lock``.

The lock is ``flock(2)`` on a file that records its holder (pid, host, start time, command); a
clean exit (an error or Ctrl-C included) removes the file. The kernel drops the lock when the holder
dies in any way (``kill -9`` included), so a lock file left by a killed run is *stale*: the next run
takes it over and says whose it was. A second process while the holder lives gets
:class:`~fastflow.errors.LockedError` naming the holder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastflow.errors import ConfigError, LockedError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _holder(text: str) -> str | None:
    """``WORK by pid N on HOST since TIME`` from a lock record, or None when ``text`` is not one."""
    try:
        h = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(h["started"])))
        return f"{h['command']} by pid {int(h['pid'])} on {h['host']} since {since}"
    except (ValueError, KeyError, TypeError, OverflowError, OSError, RecursionError):
        return None


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
            log.warning("%s: taking over the lock of an earlier run that did not release it (%s: killed or "
                        "crashed)", d, _holder(previous))
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "command": what}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        yield
    finally:
        _release(d / LOCK_NAME, fd)  # while still locked: a waiter then sees a removed file
        os.close(fd)  # closing drops the flock


def _acquire(path: Path, d: Path, what: str) -> tuple[int, str]:
    """``(fd, earlier record)`` with ``path`` flock-ed. Retried when the file was removed or replaced
    between our open and our lock (its holder released it meanwhile). Never follows a symlink, and
    refuses a ``.lock`` that is not a regular file of one link holding a lock record (or nothing)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.EACCES, errno.EPERM):
                raise
            raise ConfigError(f"{path} is not a lock file fastflow made (a symlink, a directory or a device); "
                              "remove it or choose another directory") from None
        mine = os.fstat(fd)
        if not stat.S_ISREG(mine.st_mode) or mine.st_nlink != 1:
            os.close(fd)
            what_it_is = "a hard link" if stat.S_ISREG(mine.st_mode) else "not a regular file"
            raise ConfigError(f"{path} is not a lock file fastflow made ({what_it_is}); remove it or choose "
                              "another directory")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0).decode(errors="replace")) or "a process with no readable record"
            os.close(fd)
            raise LockedError(f"{d} is in use: {holder} (this run: {what}); wait for it to finish or choose "
                              "another directory") from None
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            previous = os.pread(fd, 4096, 0).decode(errors="replace")
            if previous.strip() and _holder(previous) is None:
                os.close(fd)
                raise ConfigError(f"{path} holds something other than a fastflow lock record; fastflow does not "
                                  "overwrite it: remove it or choose another directory")
            return fd, previous
        os.close(fd)


def _release(path: Path, fd: int) -> None:
    """Remove ``path`` if it is still the file we locked (never a file put there since)."""
    mine = os.fstat(fd)
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
        path.unlink()


__all__ = ["LOCK_NAME", "directory_lock"]
