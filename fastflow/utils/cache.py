"""The user cache directory: ``$FASTFLOW_CACHE`` (default ``~/.cache/fastflow``). Holds what is
costly to make and keyed by what made it (the digits classifier, kernel code-generation results);
deleting it only costs the time to remake them."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("FASTFLOW_CACHE", Path.home() / ".cache" / "fastflow"))
