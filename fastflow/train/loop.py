"""The one training loop (EDM style): every objective, DDP, AMP, EMA, atomic checkpoints,
bit-exact resume, JSONL/TensorBoard logs, a progress bar and periodic sample grids."""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from fastflow.data import BatchStream, Dataset, build_dataset
from fastflow.errors import ConfigError, TrainingError
from fastflow.flow.sample import generate
from fastflow.fused import apply as apply_fused, split_spec
from fastflow.models.checkpoint import checkpoints_root, load_weights, read_config, resolve_checkpoint
from fastflow.models.presets import build_model, model_kind, sample_shape, viewable
from fastflow.objectives import build_objective
from fastflow.train.config import TrainConfig, dump_config
from fastflow.utils.distributed import DistInfo, barrier, gather_bytes, init_distributed
from fastflow.train.ema import EMA
from fastflow.train.logger import Logger, truncate_log
from fastflow.train.state import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from fastflow.utils.io import atomic_write_text, remove_stale_temps, writable_dir
from fastflow.utils.lock import directory_lock
from fastflow.utils.images import save_samples


def check_model_data(model: nn.Module, data: Dataset) -> None:
    """Fail early, in one line, when the model cannot take the data."""
    cfg = model.config
    shape, want = data.sample_shape, sample_shape(model)
    if shape != want:
        raise ConfigError(f"model expects samples of shape {want}, the data gives {shape}")
    if cfg.num_classes and data.num_classes > cfg.num_classes:
        raise ConfigError(f"model has num_classes={cfg.num_classes}, the data has {data.num_classes} classes")
    if cfg.num_classes and not data.num_classes:
        raise ConfigError("model is class-conditional but the data has no labels")


def autocast_for(mode: str, device: torch.device) -> Any:
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    if mode == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``optim.lr`` over ``optim.warmup`` steps, then constant."""
    w = cfg.optim.warmup
    return cfg.optim.lr * (min(1.0, (step + 1) / w) if w else 1.0)


class _PreviewGrids:
    """Fixed inputs for periodic grids, so grids are comparable across steps: noise (and
    labels), or what the objective's ``sample_inputs(batch)`` makes from a fixed data batch
    (e.g. the noised degraded images of super-resolution)."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, data: Dataset, objective: Any,
                 device: torch.device) -> None:
        n = cfg.train.sample_n
        self.steps = cfg.train.sample_steps
        self.z: Tensor | None = None
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            make = getattr(objective, "sample_inputs", None)
            if make is not None:
                z, self.cond = make(data.get(torch.arange(min(n, len(data)))).to(device))
                self.z = z
            elif model_kind(model.config) != "image":
                self.z = torch.randn(n, *data.sample_shape).to(device)
                k = model.config.num_classes
                self.cond = (torch.arange(n) % k).to(device) if k else None
        self.reference = data.get(torch.arange(min(len(data), 2000))).x if data_is_points(data) else None

    def __call__(self, model: nn.Module, path: Path, step: int) -> None:
        if self.z is None:  # the objective defines no preview for an image-conditioned model
            return
        x = viewable(model, generate(model, self.z, "euler", self.steps, cond=self.cond).x)
        save_samples(x, path, self.reference, title=f"step {step}, Euler {self.steps}")


def data_is_points(data: Dataset) -> bool:
    return len(data.sample_shape) == 1


def _rng_states(info: DistInfo) -> tuple[list[Tensor], list[Tensor]]:
    cpu = gather_bytes(info, torch.get_rng_state())
    cuda = gather_bytes(info, torch.cuda.get_rng_state(info.device)) if info.device.type == "cuda" else []
    return cpu, cuda


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
    return {k: float(v) for k, v in zip(keys, vec.tolist())}


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Run (or resume) training as configured; returns the run directory. The run directory is
    locked for the whole run: a second training (or pair generation) there is refused."""
    info = init_distributed()
    run = Path(cfg.out_dir)
    if cfg.train.batch_size % info.world:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by {info.world} ranks")
    if info.main:
        writable_dir(run)
    with directory_lock(run, "training", enabled=info.main):
        return _train(cfg, resume, info, run)


def _resume(cfg: TrainConfig, info: DistInfo, ckpt: Path, model: nn.Module, ema: EMA,
            opt: torch.optim.Optimizer) -> int:
    """Load ``ckpt`` into the run; returns its step. Refuses a changed seed or batch size (the data
    stream would silently differ); a changed world size continues, not bit-exactly, with a note."""
    meta = read_config(ckpt).get("meta")
    meta = meta if isinstance(meta, dict) else {}
    for key, now in (("seed", cfg.seed), ("batch_size", cfg.train.batch_size)):
        if meta.get(key, now) != now:
            name = "seed" if key == "seed" else "train.batch_size"
            raise ConfigError(f"{ckpt} was trained with {name}={meta[key]}; resuming with {now} would not "
                              f"continue that run: keep {meta[key]}, or start a new out_dir with "
                              f"train.init_from={ckpt}")
    state = load_checkpoint(ckpt, model, ema.model)
    opt.load_state_dict(state.optimizer)
    if len(state.rng) == info.world:
        torch.set_rng_state(state.rng[info.rank])
        if state.cuda_rng and info.device.type == "cuda":
            torch.cuda.set_rng_state(state.cuda_rng[info.rank], info.device)
    else:
        torch.manual_seed(cfg.seed + 1 + info.rank + state.step)
        if info.main:
            print(f"note: checkpoint was written by {len(state.rng)} ranks, resuming on "
                  f"{info.world}: training continues, but not bit-exactly")
    return state.step


def _train(cfg: TrainConfig, resume: bool, info: DistInfo, run: Path) -> Path:
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    data = build_dataset(cfg.data)
    spec, fused = split_spec(cfg.model)
    model = build_model(spec)
    check_model_data(model, data)
    stream = BatchStream(data, cfg.train.batch_size // info.world, cfg.seed, info.rank, info.world)
    model.to(info.device)
    apply_fused(model, fused, info.device)  # before the EMA copy, so both run the same kernels
    ema = EMA(model, cfg.train.ema_rate)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                           eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    objective = build_objective(cfg.objective, num_classes=model.config.num_classes,
                                device=info.device)
    times = getattr(objective, "model_times", 1)
    if times != 1 and getattr(model.config, "times", 1) != times:
        raise ConfigError(f"objective {cfg.objective.get('name')} needs a model with model.times: {times}")
    if times == 2 and model.config.t_scale > 10 and info.main:
        print(f"note: model.t_scale={model.config.t_scale:g}: MeanFlow's JVP target differentiates the time features; "
              "on digits it diverged at 999 and trained at 1 (model.t_scale=1)", file=sys.stderr)
    if isinstance(getattr(objective, "teacher", None), nn.Module):
        check_teacher(model, objective.teacher)
        apply_fused(objective.teacher, fused, info.device)

    start = 0
    ckpt = latest_checkpoint(run)  # a looping symlink or a corrupted `latest` is an error, not "none"
    if ckpt is not None and not resume:
        raise ConfigError(f"{run} already holds checkpoints: pass --resume to continue, "
                          "or choose another out_dir")
    if info.main:  # every output path is checked before the first step
        for d in (run, checkpoints_root(run), run / "samples"):
            remove_stale_temps(d)  # what a kill during a write left behind
    if resume and ckpt is None and info.main:
        print(f"note: --resume: no checkpoint in {run}; starting from step 0")
    if resume and ckpt is not None:
        start = _resume(cfg, info, ckpt, model, ema, opt)
    else:
        if cfg.train.init_from:
            init = resolve_checkpoint(cfg.train.init_from)
            load_weights(model, init / ("ema.safetensors" if (init / "ema.safetensors").exists()
                                        else "model.safetensors"))
            ema.model.load_state_dict(model.state_dict())
        torch.manual_seed(cfg.seed + 1 + info.rank)  # independent noise per rank
    if start >= cfg.train.steps:
        if info.main:
            print(f"{run}: already trained to step {start} (train.steps={cfg.train.steps})")
        return run
    return _loop(cfg, info, run, start, data, stream, model, ema, opt, objective)


def _loop(cfg: TrainConfig, info: DistInfo, run: Path, start: int, data: Dataset, stream: BatchStream,
          model: nn.Module, ema: EMA, opt: torch.optim.Optimizer, objective: Any) -> Path:
    logger = grids = None
    if info.main:
        atomic_write_text(run / "config.yaml", dump_config(cfg))
        truncate_log(run / "log.jsonl", start)
        logger = Logger(run, cfg.train.tensorboard)
        grids = _PreviewGrids(cfg, model, data, objective, info.device)
    barrier(info)

    net = model
    if info.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    amp = autocast_for(cfg.train.amp, info.device)
    clip = cfg.optim.grad_clip or math.inf
    meta = {"dataset": cfg.data.get("name"), "objective": cfg.objective.get("name", "rf"),
            "data_config": cfg.data, "objective_config": cfg.objective, "seed": cfg.seed,
            "batch_size": cfg.train.batch_size}

    bar = tqdm(total=cfg.train.steps, initial=start, disable=not (info.main and cfg.train.progress),
               dynamic_ncols=True, desc="train", mininterval=0.2 if sys.stderr.isatty() else 15.0)
    sums: dict[str, Tensor] = {}
    t_last, cpu_last, n_last = time.perf_counter(), time.process_time(), start
    model.train()
    for step in range(start, cfg.train.steps):
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = stream.batch(step).to(info.device)
        with amp:
            loss, logs = objective(net, batch, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        decay = ema.update(model, step)
        for k, v in {**logs, "grad_norm": gnorm.detach()}.items():
            sums[k] = sums.get(k, 0) + v.float()
        n = step + 1
        bar.update(1)

        if n % cfg.train.log_every == 0 or n == cfg.train.steps:
            rec = _mean_logs(sums, n_last, n, info)
            if info.main:
                now, cpu = time.perf_counter(), time.process_time()
                rec.update(lr=lr, ema_decay=decay,
                           samples_per_s=(n - n_last) * cfg.train.batch_size / (now - t_last),
                           cpu_s_per_step=(cpu - cpu_last) / (n - n_last))
                logger.log(n, rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                t_last, cpu_last = now, cpu
            sums, n_last = {}, n

        if n % cfg.train.ckpt_every == 0 or n == cfg.train.steps:
            if sums:  # never checkpoint weights a diverged step produced
                _check_finite(torch.stack(list(sums.values())), n_last, n)
            rng, cuda_rng = _rng_states(info)
            if info.main:
                save_checkpoint(run, model, ema.model,
                                TrainState(n, opt.state_dict(), rng, cuda_rng),
                                keep=cfg.train.keep_ckpts, meta=meta)
            barrier(info)

        if info.main and ((cfg.train.sample_every and n % cfg.train.sample_every == 0)
                          or n == cfg.train.steps):
            grids(ema.model, run / "samples" / f"step-{n:08d}.png", n)
    bar.close()
    if logger is not None:
        logger.close()
    return run
