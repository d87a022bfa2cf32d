"""What every pipeline stage shares: a training stage that resumes, budgets scaled by ``--scale``,
a progress line, and a whole pipeline repeated over seeds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastflow.metrics.evaluate import aggregate_rows
from fastflow.train import load_config, train
from fastflow.train.config import PACKAGED_CONFIGS
from fastflow.train.state import latest_checkpoint

#: the embedded digits' sample shape
DIGITS_SHAPE = (1, 16, 16)


def log(msg: str) -> None:
    print(msg, flush=True)


def budget(n: int, scale: float) -> int:
    """A step or sample count ``n`` multiplied by ``scale`` (at least 1)."""
    return max(1, int(round(n * scale)))


def train_stage(out: Path, name: str, overrides: list[str], config: str | None = "digits.yaml", seed: int = 0) -> Path:
    """Train ``out/name`` from a packaged config plus ``key=value`` overrides, resuming a run that
    has checkpoints (a finished one returns at once); returns its latest checkpoint."""
    cfg = load_config(PACKAGED_CONFIGS / config if config else None,
                      [f"out_dir={out / name}", "train.tensorboard=false", f"seed={seed}", *overrides])
    log(f"  {name}: {cfg.objective.get('name')} · {cfg.model} · {cfg.train.steps} steps")
    return latest_checkpoint(train(cfg, resume=latest_checkpoint(out / name) is not None))


def over_seeds(run: Callable[..., dict[str, Any]], out: Path, seeds: Sequence[int], scale: float,
               keys: Sequence[str]) -> dict[str, Any]:
    """``run(out/seed-S, scale, seed=S)`` for each seed; its rows as mean ± sd (``aggregate_rows``:
    ``keys`` name a row), each check as the number of seeds in which it holds, and every run."""
    runs = [run(out / f"seed-{s}", scale, seed=s) for s in seeds]
    return {"seeds": list(seeds), "scale": scale, "rows": aggregate_rows([r["rows"] for r in runs], keys),
            "checks": {name: sum(bool(r["checks"][name]) for r in runs) for name in runs[0]["checks"]},
            "per_seed": {str(s): r for s, r in zip(seeds, runs)}}
