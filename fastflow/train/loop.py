"""The one training loop (EDM style): every objective, one process / DDP / FSDP2, AMP, EMA, gradient
accumulation, activation checkpointing, atomic checkpoints (single-file or sharded), bit-exact
resume, JSONL/TensorBoard logs, a progress bar and periodic sample grids."""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from fastflow.data import Dataset, build_dataset
from fastflow.errors import ConfigError, TrainingError
from fastflow.fused import split_spec
from fastflow.fused.frozen import apply_frozen
from fastflow.models.checkpoint import checkpoints_root, load_model, resolve_checkpoint
from fastflow.models.presets import model_kind, sample_shape
from fastflow.models.sharded import is_sharded
from fastflow.objectives import build_objective
from fastflow.objectives.base import objective_settings
from fastflow.train.accel import autocast_for, compiled, compiled_graphs
from fastflow.train.config import TrainConfig, dump_config
from fastflow.train.dcp import load_sharded, save_sharded
from fastflow.train.ema import EMA
from fastflow.train.lineage import record_lineage
from fastflow.train.logger import Logger, truncate_log
from fastflow.train.parallel import build, checkpoint_activations, fsdp_kwargs, loop_support
from fastflow.train.preview import PreviewGrids
from fastflow.train.resume import check_resumable, check_run_dir, difference, jsonable
from fastflow.train.state import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from fastflow.train.step import MicroBatches, check_split, train_step
from fastflow.utils.distributed import DistInfo, barrier, init_distributed, shutdown_distributed
from fastflow.utils.io import atomic_write_text, remove_stale_temps, temp_name, writable_dir
from fastflow.utils.lock import directory_lock

log = logging.getLogger(__name__)


def check_model_data(model: nn.Module, data: Dataset) -> None:
    """Fail early, in one line, when the model cannot take the data."""
    cfg = model.config
    shape, want = data.sample_shape, sample_shape(model)
    if shape != want:
        keys = ("model.in_channels and model.resolution (or data.channels and data.resolution, for an image "
                "folder)" if len(shape) == 3 and len(want) == 3 else "model.dim (or the data)")
        raise ConfigError(f"model expects samples of shape {want}, the data gives {shape}: make them agree through "
                          f"{keys}")
    if cfg.num_classes and data.num_classes > cfg.num_classes:
        raise ConfigError(f"model has num_classes={cfg.num_classes}, the data has {data.num_classes} classes")
    if cfg.num_classes and not data.num_classes:
        raise ConfigError("model is class-conditional but the data has no labels")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``optim.lr`` over ``optim.warmup`` steps, then constant."""
    w = cfg.optim.warmup
    return cfg.optim.lr * (min(1.0, (step + 1) / w) if w else 1.0)


def _check_finite(values: Tensor, start: int, end: int) -> None:
    """Raise on a non-finite loss/gradient; checked per log or checkpoint interval, so the
    training step itself never waits on the host."""
    if not bool(torch.isfinite(values).all()):
        raise TrainingError(f"non-finite loss or gradient between steps {start} and {end}; "
                            "lower optim.lr or check the data")


def check_teacher(model: nn.Module, teacher: nn.Module) -> None:
    """An objective's teacher (FGD's guide, OFTSR's teacher) must generate what the student does."""
    want, got = sample_shape(model), sample_shape(teacher)
    if got != want:
        raise ConfigError(f"objective.teacher generates samples of shape {got}, the student {want}")
    def kind(m: nn.Module) -> str:
        k = model_kind(m.config)
        return {"class": f"class-conditional ({m.config.num_classes} classes)", "unconditional": k}.get(
            k, f"{k}-conditioned")

    if kind(teacher) != kind(model):
        raise ConfigError(f"objective.teacher is {kind(teacher)}, the student {kind(model)}")


def _mean_logs(sums: dict[str, Tensor], start: int, end: int, info: DistInfo) -> dict[str, float]:
    """Per-step means of the summed logs over ``[start, end)``, averaged over ranks; raises on
    non-finite values (the one host sync per log interval)."""
    keys = sorted(sums)
    vec = torch.stack([sums[k] for k in keys]) / (end - start)
    _check_finite(vec, start, end)
    if info.world > 1:
        dist.all_reduce(vec)
        vec /= info.world
    return {k: float(v) for k, v in zip(keys, vec.tolist(), strict=True)}


Resume = bool | Literal["auto"]


def train(cfg: TrainConfig, resume: Resume = False) -> Path:
    """Run (or resume) training as configured; returns the run directory. ``resume``: False (a run
    directory holding checkpoints is refused), True (continue its latest checkpoint; none is an
    error), ``"auto"`` (continue when there is one, else start: what ``torchrun --max-restarts``
    needs to survive a killed rank unattended). The run directory is locked for the whole run: a
    second training (or pair generation) there is refused."""
    if resume not in (True, False, "auto"):
        raise ConfigError(f"resume must be True, False or 'auto', got {resume!r}")
    t = cfg.train
    had_group = dist.is_initialized()
    info = init_distributed(group_of_one=t.parallel == "fsdp2")
    own_group = not had_group and info.world == 1 and dist.is_initialized()
    try:
        run = Path(cfg.out_dir)
        check_split(t.batch_size, info.world, t.grad_accum)
        if info.main:
            check_run_dir(run)
            writable_dir(run)
        with directory_lock(run, "training", enabled=info.main):
            return _train(cfg, resume, info, run)
    finally:
        if own_group:  # a process group of one made for this call: not left to the caller
            shutdown_distributed()


def _resume(cfg: TrainConfig, info: DistInfo, ckpt: Path, model: nn.Module, ema: EMA,
            opt: torch.optim.Optimizer, objective: Any) -> int:
    """Load ``ckpt`` (sharded or single-file) into the run; returns its step."""
    check_resumable(cfg, info, ckpt, model, objective)
    if is_sharded(ckpt):
        return load_sharded(ckpt, model, ema.model, opt, info)
    state = load_checkpoint(ckpt, model, ema.model)
    opt.load_state_dict(state.optimizer)
    return state.step


def _build(cfg: TrainConfig, info: DistInfo, data: Dataset) -> tuple[nn.Module, EMA, str]:
    """Model (sharded under FSDP2), its EMA (sharded alike), and the fused-kernel mode."""
    t = cfg.train
    spec, fused = split_spec(cfg.model)
    shard = fsdp_kwargs(info, t.precision, t.cpu_offload) if t.parallel == "fsdp2" else None
    model = build(spec, fused, info, cfg.seed, shard, check=lambda m: check_model_data(m, data))
    ema = EMA(model, t.ema_rate, copy_into=None if shard is None else build(spec, fused, info, cfg.seed, shard))
    if t.activation_checkpointing == "blocks":
        checkpoint_activations(model)
    return model, ema, fused


def _init_from(path: str, model: nn.Module, ema: EMA) -> None:
    """Start from a checkpoint's weights (EMA if present), sharded or not, into a plain or FSDP2 model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    init = resolve_checkpoint(path)
    reference = load_model(init, weights="ema")  # checked: names, shapes, dtypes, digests
    shapes = {k: list(v.shape) for k, v in reference.state_dict().items()}
    changed = difference("weights", shapes, {k: list(v.shape) for k, v in model.state_dict().items()})
    if changed is not None:
        name, was, now = changed
        raise ConfigError(f"train.init_from={path}: its {name} is {was}, this run's model has {now} (another "
                          f"architecture: model.* differs from the checkpoint's config.json, e.g. model.times)")
    set_model_state_dict(model, reference.state_dict(), options=StateDictOptions(full_state_dict=True))
    ema.copy_from(model)


def _train(cfg: TrainConfig, resume: Resume, info: DistInfo, run: Path) -> Path:
    data = build_dataset(cfg.data)
    model, ema, fused = _build(cfg, info, data)
    micro = MicroBatches.build(data, cfg.train.batch_size, cfg.train.grad_accum, cfg.seed, info)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                           eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    objective = build_objective(cfg.objective, num_classes=model.config.num_classes,
                                device=info.device)
    times = objective.model_times
    if times != 1 and getattr(model.config, "times", 1) != times:
        raise ConfigError(f"objective {cfg.objective.get('name')} needs a model with model.times: {times}")
    if times == 2 and model.config.t_scale > 10 and info.main:
        log.warning("model.t_scale=%g: MeanFlow's JVP target differentiates the time features; on digits it "
                    "diverged at 999 and trained at 1 (model.t_scale=1)", model.config.t_scale)
    for name, frozen in objective.frozen().items():  # replicated on every rank
        check_teacher(model, frozen)
        decision, err = apply_frozen(frozen, fused, info.device)
        if info.main and decision.active:
            print(f"objective.{name}: {decision.path} inference kernels, max |Δ| against eager {err:.2g} on a "
                  "random batch")
    objective = objective.bind(loop_support(cfg.train.parallel, cfg.train.activation_checkpointing))

    start = 0
    ckpt = latest_checkpoint(run)  # a looping symlink or a corrupted `latest` is an error, not "none"
    if ckpt is not None and not resume:
        raise ConfigError(f"{run} already holds checkpoints: pass --resume to continue, "
                          "or choose another out_dir")
    if info.main:  # what a kill during one of this run's writes left behind; nothing else
        for d, owned in ((run, temp_name(r"config\.yaml|log\.jsonl")),
                         (checkpoints_root(run), rf"\.step-\d{{8}}\.tmp|{temp_name('latest')}"),
                         (run / "samples", temp_name(r"step-\d{8}\.png"))):
            remove_stale_temps(d, owned)
    barrier(info)
    if resume is True and ckpt is None:
        raise ConfigError(f"--resume: {run} holds no checkpoint to continue; drop --resume to start, or pass "
                          "--resume auto (continue when there is one)")
    if resume == "auto" and ckpt is None and info.main:
        print(f"--resume auto: no checkpoint in {run} yet; starting at step 0")
    if resume and ckpt is not None:
        start = _resume(cfg, info, ckpt, model, ema, opt, objective)
        if info.main:
            print(f"resuming {run} from step {start} ({ckpt.name})")
    elif cfg.train.init_from:
        _init_from(cfg.train.init_from, model, ema)
        if info.main:
            print(f"initialised from {resolve_checkpoint(cfg.train.init_from)} (its EMA weights where it has them)")
    if start >= cfg.train.steps:
        if info.main:
            print(f"{run}: already trained to step {start} (train.steps={cfg.train.steps})")
        return run
    return _loop(cfg, info, run, start, data, micro, model, ema, opt, objective)


def _check_weights(cfg: TrainConfig, info: DistInfo, models: tuple[nn.Module, ...], step: int) -> None:
    """Refuse to checkpoint non-finite weights (every rank's shard): the loss can be finite while the
    optimiser's update is not (an Adam ``eps`` that vanishes in float32, an overflow)."""
    local = [p.to_local() if hasattr(p, "to_local") else p for m in models for p in m.parameters()]
    bad = torch.stack([(~torch.isfinite(p.detach())).any() for p in local]).any().float()
    if info.world > 1:
        dist.all_reduce(bad)
    if bool(bad):
        raise TrainingError(f"an optimiser step made non-finite weights by step {step} "
                            f"(optim.lr={cfg.optim.lr:g}, optim.eps={cfg.optim.eps:g}); no checkpoint written, "
                            "the last one stays")


def _save(cfg: TrainConfig, info: DistInfo, run: Path, n: int, model: nn.Module, ema: EMA,
          opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    if cfg.train.parallel == "fsdp2":
        save_sharded(run, n, model, ema.model, opt, cfg.train.keep_ckpts, meta, info)
        return
    if info.main:
        save_checkpoint(run, model, ema.model, TrainState(n, opt.state_dict()), keep=cfg.train.keep_ckpts, meta=meta)
    barrier(info)


def _loop(cfg: TrainConfig, info: DistInfo, run: Path, start: int, data: Dataset, micro: MicroBatches,
          model: nn.Module, ema: EMA, opt: torch.optim.Optimizer, objective: Any) -> Path:
    t = cfg.train
    sharded = t.parallel == "fsdp2"
    logger = None
    grids = PreviewGrids(cfg, ema.model, data, objective, info.device) if info.main or sharded else None
    if info.main:
        atomic_write_text(run / "config.yaml", dump_config(cfg))
        truncate_log(run / "log.jsonl", start)
        logger = Logger(run, t.tensorboard)
        print(f"global batch {t.batch_size} = {info.world} rank(s) × {t.grad_accum} micro-batch(es) of "
              f"{t.batch_size // micro.total} ({t.parallel if info.world > 1 or sharded else 'one process'})")
    barrier(info)

    net = model
    if info.world > 1 and not sharded:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    amp = autocast_for(t.amp, info.device)
    net, call = compiled(t.compile, net, objective)
    clip = cfg.optim.grad_clip or math.inf
    meta = {"dataset": cfg.data.get("name"), "objective": cfg.objective.get("name", "rf"),
            "data_config": cfg.data, "objective_config": cfg.objective, "seed": cfg.seed,
            "objective_settings": jsonable(objective_settings(objective)),
            "batch_size": t.batch_size, "micro_batches": micro.total, "parallel": t.parallel, "world": info.world,
            "lineage": record_lineage(cfg, data)}

    bar = tqdm(total=t.steps, initial=start, disable=not (info.main and t.progress),
               dynamic_ncols=True, desc="train", mininterval=0.2 if sys.stderr.isatty() else 15.0)
    sums: dict[str, Tensor] = {}
    t_last, cpu_last, n_last = time.perf_counter(), time.process_time(), start
    model.train()
    for step in range(start, t.steps):
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        logs = train_step(net, model, call, micro, step, info.device, amp, opt, clip)
        decay = ema.update(model, step)
        for k, v in logs.items():
            sums[k] = sums.get(k, 0) + v
        n = step + 1
        bar.update(1)

        if n % t.log_every == 0 or n == t.steps:
            rec = _mean_logs(sums, n_last, n, info)
            if info.main:
                now, cpu = time.perf_counter(), time.process_time()
                rec.update(lr=lr, ema_decay=decay, samples_per_s=(n - n_last) * t.batch_size / (now - t_last),
                           cpu_s_per_step=(cpu - cpu_last) / (n - n_last))
                if t.compile != "off":
                    rec["compiled_graphs"] = compiled_graphs()
                logger.log(n, rec)
                bar.set_postfix(
                    {k: f"{rec[k]:.4g}" for k in ("loss", "mse") if k in rec}
                )  # mse: MeanFlow's weighted loss is ~1
                t_last, cpu_last = now, cpu
            sums, n_last = {}, n

        if n % t.ckpt_every == 0 or n == t.steps:
            if sums:  # never checkpoint weights a diverged step produced
                _check_finite(torch.stack(list(sums.values())), n_last, n)
            _check_weights(cfg, info, (model, ema.model), n)
            _save(cfg, info, run, n, model, ema, opt, meta)

        if grids is not None and ((t.sample_every and n % t.sample_every == 0) or n == t.steps):
            grids(ema.model, run / "samples" / f"step-{n:08d}.png", n, save=info.main)
    bar.close()
    if logger is not None:
        logger.close()
    return run
