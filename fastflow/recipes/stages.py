"""What every pipeline stage shares: a training stage that resumes, its CPU time recorded, budgets
scaled by ``--scale``, a progress line, and a whole pipeline repeated over seeds (in parallel
processes with ``--jobs``)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from fastflow.errors import ConfigError
from fastflow.fused.frozen import apply_frozen
from fastflow.metrics.evaluate import aggregate_rows
from fastflow.objectives import OBJECTIVES, objective_options
from fastflow.train import load_config, train
from fastflow.train.accel import cpu_bf16
from fastflow.train.config import PACKAGED_CONFIGS
from fastflow.train.state import latest_checkpoint
from fastflow.utils.io import atomic_write_json, read_json

#: the embedded digits' sample shape
DIGITS_SHAPE = (1, 16, 16)


def log(msg: str) -> None:
    print(msg, flush=True)


def budget(n: int, scale: float) -> int:
    """A step or sample count ``n`` multiplied by ``scale`` (at least 1)."""
    return max(1, int(round(n * scale)))


@dataclass(frozen=True)
class Execution:
    """How the recipes' stages run, not what they compute: ``train.compile`` of every training stage
    whose objective compiles (MeanFlow's does not: it runs eager), ``train.amp``, and the kernel path
    (``model.fused``) of the trained networks, their frozen teachers and the pair teachers
    (:func:`pair_teacher`).
    :meth:`fastest` is the demo's default; ``Execution(compile="off", amp="none", fused="off")`` is the
    eager float32 route it is measured against (``docs/training.md``)."""

    compile: str = "off"
    amp: str = "none"
    fused: str = "auto"

    def __post_init__(self) -> None:
        if self.fused == "cpu":
            raise ConfigError("fused=cpu: the trained networks cannot take the CPU block kernel (inference-only); "
                              "fused=auto puts it into the teachers on a CPU")

    @classmethod
    def fastest(cls) -> Execution:
        """Compiled models, bf16 where this CPU executes it natively, the inference kernels for teachers."""
        return cls(compile="model", amp="bf16" if cpu_bf16()[0] else "none", fused="auto")

    def overrides(self, objective: dict[str, Any]) -> list[str]:
        """``key=value`` overrides of a training stage with the objective section ``objective``."""
        name, _ = objective_options(objective)
        mode = "off" if OBJECTIVES[name].not_compilable else self.compile
        return [f"train.compile={mode}", f"train.amp={self.amp}", f"model.fused={self.fused}"]


#: the library's defaults: eager float32 training, kernels where ``fused=auto`` takes them
EAGER = Execution()


def pair_teacher(model: torch.nn.Module, ex: Execution) -> None:
    """Give a pair teacher ``ex``'s inference path (:func:`~fastflow.fused.frozen.apply_frozen`) and
    say how far it is from eager."""
    decision, err = apply_frozen(model, ex.fused, next(model.parameters()).device)
    if decision.active:
        log(f"  pair teacher: {decision.path} inference kernels, max |Δ| against eager {err:.2g} on a random batch")


def train_stage(out: Path, name: str, overrides: list[str], config: str | None = "digits.yaml", seed: int = 0,
                execution: Execution = EAGER) -> Path:
    """Train ``out/name`` from a packaged config plus ``key=value`` overrides, run as ``execution``
    says, resuming a run that has checkpoints (a finished one returns at once); returns its latest
    checkpoint. The time it took is added to ``out/timing.json`` (see :func:`timed`)."""
    base = [f"out_dir={out / name}", "train.tensorboard=false", f"seed={seed}", *overrides]
    cfg = load_config(PACKAGED_CONFIGS / config if config else None, base)
    cfg = load_config(PACKAGED_CONFIGS / config if config else None, [*base, *execution.overrides(cfg.objective)])
    log(f"  {name}: {cfg.objective.get('name')} · {cfg.model} · {cfg.train.steps} steps")
    with timed(out, name):
        return latest_checkpoint(train(cfg, resume="auto"))


@contextmanager
def timed(out: Path, name: str) -> Iterator[None]:
    """Add the CPU seconds of the ``with`` body (``time.process_time``: every thread of this process)
    to ``out/timing.json[name]`` when it succeeds: the compute a stage really took, summed over
    resumed runs (a finished stage adds ~0), whatever else the machine runs meanwhile."""
    t0 = time.process_time()
    yield
    path = out / "timing.json"
    spent = read_json(path) if path.is_file() else {}
    spent[name] = spent.get(name, 0.0) + time.process_time() - t0
    atomic_write_json(path, spent)


def stage_seconds(out: Path, names: Sequence[str]) -> float:
    """The CPU seconds ``out/timing.json`` records for the stages ``names`` (ConfigError if one is missing)."""
    path = out / "timing.json"
    spent = read_json(path) if path.is_file() else {}
    missing = [n for n in names if n not in spent]
    if missing:
        raise ConfigError(f"{out}: no recorded time for {missing} (run those stages there first)")
    return float(sum(spent[n] for n in names))


def over_seeds(run: Callable[..., dict[str, Any]], out: Path, seeds: Sequence[int], scale: float,
               keys: Sequence[str], jobs: int = 1, runs: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``run(out/seed-S, scale, seed=S)`` for each seed (:func:`run_each`; ``runs``: their results,
    already run), its rows as mean ± sd (``aggregate_rows``: ``keys`` name a row), each check as the
    number of seeds in which it holds, and every run."""
    runs = list(runs) if runs is not None else run_each(run, out, seeds, scale, jobs)
    return {"seeds": list(seeds), "scale": scale, "rows": aggregate_rows([r["rows"] for r in runs], keys),
            "checks": {name: sum(bool(r["checks"][name]) for r in runs) for name in runs[0]["checks"]},
            "per_seed": {str(s): r for s, r in zip(seeds, runs, strict=True)}}


def run_each(run: Callable[..., Any], out: Path, seeds: Sequence[int], scale: float, jobs: int = 1) -> list[Any]:
    """``run(out/seed-S, scale, seed=S)`` for each seed, in ``jobs`` worker processes (spawned, each
    with this process's thread count) when ``jobs > 1``."""
    if jobs > 1 and len(seeds) > 1:
        with ProcessPoolExecutor(min(jobs, len(seeds)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) as pool:
            return list(pool.map(partial(_run_seed, run, out, scale), seeds))
    return [_run_seed(run, out, scale, s) for s in seeds]


def _run_seed(run: Callable[..., Any], out: Path, scale: float, seed: int) -> Any:
    return run(out / f"seed-{seed}", scale, seed=seed)
