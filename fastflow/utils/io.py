"""Atomic file writes (a temporary name ``.NAME.XXXX.tmp`` in the same directory, fsync, rename),
checks that an output can be written before long work starts, and file digests."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fastflow.errors import ConfigError


@contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Native writers (safetensors' Rust, ONNX's and AOTInductor's C++) report a full disk or quota
    as their own exception types: when a write into ``path``'s directory fails and that file system
    has no block left for this process, raise the ``OSError(ENOSPC)`` naming ``path`` that the CLI
    reports in one line. Any other failure propagates unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) and not _disk_full(path):
            raise
        code = e.errno if e.errno in (errno.ENOSPC, errno.EDQUOT) else errno.ENOSPC
        raise OSError(code, os.strerror(code), str(path)) from None
    except Exception:
        if not _disk_full(path):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None


def _disk_full(path: str | Path) -> bool:
    """Whether the file system holding ``path`` has (almost) no block this process may write."""
    p = Path(path)
    where = next((q for q in (p, *p.parents) if q.exists()), None)
    if where is None:
        return False
    try:
        st = os.statvfs(where)
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may write into the reserved blocks
    return free * st.f_frsize < 64 * 1024


def atomic_write(path: str | Path, write: Any) -> str:
    """Write through ``write(tmp)``, fsync, rename; returns the SHA-256 of the bytes written (taken
    from the temporary file, so the digest and the renamed file are the same bytes). A full disk is
    an ``OSError(ENOSPC)`` naming ``path``, and ``path`` keeps its earlier content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with disk_errors(path):
            write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp (and safetensors) make 0600: give what open() would
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        digest = file_digest(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


@contextmanager
def staged_artifact(path: str | Path) -> Iterator[Path]:
    """Build an artefact (and whatever files its builder writes beside it: an ONNX ``.data``, an
    engine's ``.json`` sidecar) in a temporary directory ``.NAME.XXXX.tmp`` next to ``path``; yields
    the path to build at. On success every file is fsynced and renamed into place, ``path`` last;
    on any failure (a full disk, Ctrl-C) the directory goes and an earlier artefact stays intact."""
    path = Path(path)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield stage / path.name
        files = sorted(stage.iterdir(), key=lambda f: f.name == path.name)  # the artefact last
        for f in files:
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        for f in files:
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_new_dir(path: str | Path) -> Path:
    """``path`` as a directory to create: absent or empty, its parent writable (created)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"{path} exists and is not an empty directory: choose a new output folder")
    writable_dir(path.parent)
    return path


@contextmanager
def staged_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory artefact in ``.NAME.XXXX.tmp`` beside ``path`` and rename it into place when
    complete: ``path`` is either absent (or left empty) or whole. Refuses a non-empty ``path``."""
    path = check_new_dir(path)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700: the folder gets what mkdir() would give it
        yield stage
        if path.exists():
            path.rmdir()
        os.replace(stage, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    """This process's umask (read by setting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_name(name: str) -> str:
    """The regular expression of :func:`atomic_write`'s temporaries of files whose name matches
    ``name`` (a regular expression): ``.NAME.XXXXXXXX.tmp``."""
    return rf"\.(?:{name})\.[a-z0-9_]{{8}}\.tmp"


def remove_stale_temps(directory: str | Path, owned: str) -> list[Path]:
    """Delete the entries of ``directory`` whose whole name matches the regular expression ``owned``:
    what a kill during one of fastflow's own writes left (built from :func:`temp_name`; a run's
    ``.step-N.tmp`` checkpoint directories). Nothing else is touched, whatever its name."""
    d = Path(directory)
    stale = sorted(p for p in d.iterdir() if re.fullmatch(owned, p.name)) if d.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    return stale


def _probe(directory: Path, what: str) -> None:
    """Create ``directory`` (and parents) and a file in it, then remove the file; where that fails, a
    :class:`ConfigError` "cannot write ``what``" with the reason (a file where a folder should be, named)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        blocker = next((q for q in (directory, *directory.parents) if q.exists() and not q.is_dir()), None)
        why = f"{blocker} is a file, not a directory" if blocker else e.strerror or e
        raise ConfigError(f"cannot write {what}: {why}") from None


def writable_dir(path: str | Path) -> Path:
    """Create directory ``path`` (and parents) and check a file can be written there."""
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        raise ConfigError(f"{p} exists and is not a directory (or is a broken or looping symlink)")
    _probe(p, f"to directory {p}")
    return p


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Refuse, before allocating, an array larger than the memory this machine has available."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):  # not Linux: let the allocator decide
        return
    if nbytes > avail:
        raise ConfigError(f"{what} need {nbytes / 1e9:.1f} GB; {avail / 1e9:.1f} GB of memory is available")


def check_writable(path: str | Path) -> Path:
    """Fail before long work when no file can be written at ``path`` (creates its directory)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p} is a directory; give a file path")
    _probe(p.parent, str(p))
    return p


def file_key(path: str | Path) -> tuple[int, int, str]:
    """What identifies the file ``path`` names: ``(device, inode, "")`` where it exists, else its
    directory's ``(device, inode)`` and its name (``o//a.npy``, ``./a.npy`` and a symlinked folder
    name one file); a path whose folder is missing too: its absolute, normalised text."""
    p = Path(path)
    try:
        st = os.stat(p)
        return st.st_dev, st.st_ino, ""
    except (OSError, ValueError):
        pass
    try:
        st = os.stat(p.parent)
        return st.st_dev, st.st_ino, p.name
    except (OSError, ValueError):
        return -1, -1, os.path.abspath(p)


def check_distinct(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None]) -> None:
    """No output (flag → path) names an input or another output, compared by :func:`file_key`."""
    seen = {file_key(p): f"{flag} {p}" for flag, p in inputs.items() if p}
    for flag, p in outputs.items():
        if not p:
            continue
        key = file_key(p)
        if key in seen:
            raise ConfigError(f"{flag} {p} names the same file as {seen[key]}; choose another output")
        seen[key] = f"{flag} {p}"


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                        metadata: dict[str, str] | None = None) -> str:
    """Save a flat tensor dict as safetensors (contiguous CPU copies); returns the file's SHA-256."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def atomic_torch_save(path: str | Path, obj: Any) -> str:
    """``torch.save`` of plain containers of tensors/numbers (reloadable with weights_only);
    returns the file's SHA-256. Written through a Python file object: given a file name, PyTorch's
    zip writer reports a full disk as an opaque ``RuntimeError`` (or aborts in its destructor)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def read_json(path: str | Path, error: type[Exception] = ConfigError) -> Any:
    """Parse a JSON file; a missing, unreadable, non-UTF-8 or malformed file raises ``error``
    naming it (one line)."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: a 5000-digit integer too
        raise error(f"{path}: corrupted JSON ({type(e).__name__}: {str(e)[:200]})") from None


def atomic_savez(path: str | Path, **arrays: Any) -> str:
    """``numpy.savez`` through a temporary file (never a half-written ``.npz``)."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: savez would append ".npz" to a bare name
            np.savez(f, **arrays)

    return atomic_write(path, write)


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
