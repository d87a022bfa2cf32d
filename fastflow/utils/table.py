"""Plain-text tables for CLI reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def _cell(row: dict[str, Any], column: str) -> str:
    v = _fmt(row.get(column, ""))
    return f"{v} ± {row[column + '_sd']:.2g}" if column + "_sd" in row else v


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Left-aligned text table of ``rows`` (dicts) over ``columns``; a value with a ``COLUMN_sd``
    beside it (a mean over seeds) is shown as ``mean ± sd``."""
    cells = [[_cell(r, c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])
