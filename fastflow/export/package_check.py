"""Checks of an AOTInductor package (``.pt2``) before anything in it is loaded.

A ``.pt2`` is a zip whose compiled model is a shared library that the loader extracts and
``dlopen``s. A cut library maps pages past its end, and the first touch of them kills the process
with SIGBUS — no exception can be raised. So before loading, every entry is checked: a readable
central directory, each entry inside the file, its CRC-32 (``zipfile.testzip``), and each ``.so``
an ELF file whose header tables and loadable segments lie inside its bytes (a library cut while
the zip was rewritten has a matching CRC but segments past its end). The runner
(``kernels/runner/package_check.cpp``) makes the same checks. What is trusted once these pass:
the package's compiled code, as any shared library a user chooses to run.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from fastflow.errors import ArtifactError

_ELF64 = struct.Struct("<16sHHIQQQIHHHHHH")  # e_ident … e_shstrndx
_PHDR = struct.Struct("<IIQQQQQQ")  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
_PT_LOAD = 1


def check_elf(data: bytes, name: str) -> None:
    """``data`` is a 64-bit little-endian ELF whose program/section header tables and loadable
    segments lie inside it; :class:`ArtifactError` naming ``name`` otherwise."""
    if len(data) < _ELF64.size or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ArtifactError(f"{name}: not a 64-bit little-endian ELF library (cut or foreign)")
    _, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = _ELF64.unpack_from(data)
    if phentsize != _PHDR.size or phoff + phnum * phentsize > len(data) or shoff + shnum * shentsize > len(data):
        raise ArtifactError(f"{name}: library cut short ({len(data)} bytes; its header tables reach past the end)")
    for i in range(phnum):
        kind, _, offset, _, _, filesz, _, _ = _PHDR.unpack_from(data, phoff + i * phentsize)
        if kind == _PT_LOAD and offset + filesz > len(data):
            raise ArtifactError(f"{name}: library cut short ({len(data)} bytes; a segment ends at {offset + filesz})")


def check_package(path: str | Path) -> None:
    """Every entry of the ``.pt2`` zip readable with its CRC, every ``.so`` a whole ELF library."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
            if bad is not None:
                raise ArtifactError(f"{p}: entry {bad} fails its CRC-32 (corrupted package); re-export it")
            for info in z.infolist():
                if info.filename.endswith(".so"):
                    check_elf(z.read(info), f"{p}: {info.filename}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as e:
        raise ArtifactError(f"{p}: not a readable .pt2 package ({type(e).__name__}: {str(e)[:200]})") from None
