"""``fastflow bench winners``: which path is fastest per case, from the JSON the other benches
wrote (``kernels``, ``train``, ``latency``) — the measurement ``model.fused: auto`` is to be set
from, not belief.

Cases: a kernel row's op, shape and dtype (among ``fused``, ``eager``, ``compiled`` and each SDPA
backend); a training-step row's preset and batch (among the paths); a latency row's model, solver
and steps (among the backends). Each case records every candidate's p50 (ms), the winner and
its margin over the runner-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastflow.errors import ConfigError
from fastflow.fused.auto import FORMAT, VERSION
from fastflow.utils.io import read_json


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
    return [_pick({"bench": bench, **dict(zip(keys, case, strict=False))}, times) for case, times in cases.items()]


def winners(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One entry per case found in the given bench JSONs."""
    out: list[dict[str, Any]] = []
    for path in paths:
        data = read_json(path)
        try:
            rows = data["rows"] if isinstance(data, dict) and "rows" in data else \
                data.get("group_norm", []) + data.get("attention", [])
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise ConfigError(f"{path}: not a bench JSON ({e})") from None
        if isinstance(data, dict) and data.get("bench") == "fused-paths":
            out += _grouped(rows, "fused-paths", ("device_kind", "size", "verb", "solver", "steps", "batch"), "fused",
                            "ms_per_item")
        elif rows and "path" in rows[0]:
            out += _grouped(rows, "train", ("preset", "batch"), "path", "step_p50_ms")
        elif rows and "backend" in rows[0]:
            out += _grouped(rows, "latency", ("model", "solver", "steps"), "backend", "p50_ms")
        else:
            out += _kernel_cases(rows)
    return out


def switch_table(cases: Sequence[dict[str, Any]], sources: Sequence[str]) -> dict[str, Any]:
    """The table ``fused=auto`` reads (:mod:`fastflow.fused.auto`) from ``fused-paths`` cases: per
    device kind and size class, the path with the smallest geometric mean time over the cases that
    timed every path (each case's time per item)."""
    import math


    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    for c in cases:
        if c["bench"] == "fused-paths":
            groups.setdefault((c["device_kind"], c["size"]), []).append(c["times_ms"])
    entries = []
    for (device, size), times in groups.items():
        paths = set.intersection(*(set(t) for t in times))
        score = {p: sum(math.log(t[p]) for t in times) / len(times) for p in paths}
        best = min(score, key=score.get)
        runner_up = sorted(score.values())[1] if len(score) > 1 else None
        entries.append({"device": device, "size": size, "path": best, "cases": len(times),
                        "geomean_margin": math.exp(runner_up - score[best]) if runner_up is not None else None,
                        "source": ", ".join(map(str, sources))})
    if not entries:
        raise ConfigError("no fused-paths rows in these JSONs (benchmarks/cpu_fused_paths.py writes them)")
    return {"format": FORMAT, "version": VERSION, "entries": entries}
