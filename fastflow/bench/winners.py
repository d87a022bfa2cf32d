"""``fastflow bench winners``: which path is fastest per case, from the JSON the other benches
wrote (``kernels``, ``train``, ``latency``) — the measurement ``model.fused: auto`` is to be set
from, not belief.

Cases: a kernel row's op, shape and dtype (among ``fused``, ``eager``, ``compiled`` and each SDPA
backend); a training-step row's preset and batch (among the paths); a latency row's model, solver
and steps (among the backends). Each case records every candidate's p50 (ms), the winner and
its margin over the runner-up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastflow.errors import ConfigError


def _pick(case: dict[str, Any], times: dict[str, float]) -> dict[str, Any]:
    ranked = sorted((t, name) for name, t in times.items() if t is not None and t > 0)
    if not ranked:
        return {**case, "times_ms": times, "winner": None}
    margin = ranked[1][0] / ranked[0][0] if len(ranked) > 1 else None
    return {**case, "times_ms": times, "winner": ranked[0][1], "margin_over_next": margin}


def _kernel_cases(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        times = {k.removesuffix("_ms"): v for k, v in r.items()
                 if k.endswith("_ms") and k not in ("copy_ms", "best_sdpa_ms") and not k.startswith("bound")}
        out.append(_pick({"bench": "kernels", "op": r["op"], "shape": r["shape"], "dtype": r["dtype"]}, times))
    return out


def _grouped(rows: list[dict[str, Any]], bench: str, keys: Sequence[str], path_key: str,
             time_key: str) -> list[dict[str, Any]]:
    cases: dict[tuple, dict[str, float]] = {}
    for r in rows:
        cases.setdefault(tuple(r.get(k) for k in keys), {})[r[path_key]] = r[time_key]
    return [_pick({"bench": bench, **dict(zip(keys, case))}, times) for case, times in cases.items()]


def winners(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One entry per case found in the given bench JSONs."""
    out: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            rows = data["rows"] if isinstance(data, dict) and "rows" in data else \
                data.get("group_norm", []) + data.get("attention", [])
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise ConfigError(f"{path}: not a bench JSON ({e})") from None
        if rows and "path" in rows[0]:
            out += _grouped(rows, "train", ("preset", "batch"), "path", "step_p50_ms")
        elif rows and "backend" in rows[0]:
            out += _grouped(rows, "latency", ("model", "solver", "steps"), "backend", "p50_ms")
        else:
            out += _kernel_cases(rows)
    return out
