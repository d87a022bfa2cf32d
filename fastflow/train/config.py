"""Training configuration: YAML files plus ``key=value`` overrides, validated strictly.

Values of overrides are parsed as YAML scalars (``yaml.safe_load``), never evaluated.
Unknown keys and wrong types raise :class:`~fastflow.errors.ConfigError` naming the key. A
repeated key (YAML silently keeps the last) and a document that expands past
:data:`MAX_NODES` values through aliases (an "alias bomb") are refused.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fastflow.data import dataset_options, dataset_settings
from fastflow.errors import ConfigError
from fastflow.fused.switch import split_spec
from fastflow.models.presets import model_config, resolve_spec
from fastflow.objectives import OBJECTIVES, build_objective, objective_options
from fastflow.objectives.base import objective_settings
from fastflow.train.accel import AMP_MODES, check_compile, compile_mode
from fastflow.train.parallel import check_options
from fastflow.utils.schema import build

log = logging.getLogger(__name__)

#: the smallest normal float32: a smaller Adam eps is 0 or subnormal in float32 and divides by zero
FLOAT32_TINY = 1.1754943508222875e-38
PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: values a config may hold once its aliases are expanded (ours hold ~60)
MAX_NODES = 10_000


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated within one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ConfigError(f"a mapping key must be a name, got {key!r} (line {key_node.start_mark.line + 1})")
            if key in seen:
                raise ConfigError(f"key {key!r} is given twice (line {key_node.start_mark.line + 1}); YAML would "
                                  "silently keep the last")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _count_nodes(obj: Any, limit: int = MAX_NODES) -> int:
    """Values in ``obj`` with shared (aliased) parts counted each time they occur, up to ``limit``."""
    count, stack = 0, [obj]
    while stack:
        count += 1
        if count > limit:
            raise ConfigError(f"the config expands to more than {limit} values (YAML aliases?)")
        x = stack.pop()
        if isinstance(x, dict):
            stack += [*x.keys(), *x.values()]
        elif isinstance(x, list):
            stack += x
    return count


def read_yaml(text: str, source: str) -> Any:
    """A YAML document through the strict loader, bounded in size."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        _count_nodes(data)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return data


@dataclass
class OptimConfig:
    """Adam with linear warm-up (the papers: lr 2e-4, warm-up 5000, clip 1)."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 5000
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class LoopConfig:
    steps: int = 1000
    batch_size: int = 128  # global batch (split evenly over ranks)
    ema_rate: float = 0.999999
    amp: str = "auto"  # auto (bf16 on CUDA when supported), bf16 (CUDA; CPUs with AVX512-BF16/AMX), none
    compile: str | bool = "off"  # off, model (the network compiled with Inductor), step (forward + loss compiled)
    log_every: int = 50
    ckpt_every: int = 1000
    keep_ckpts: int = 3
    sample_every: int = 0  # 0: only at the end
    sample_n: int = 64
    sample_steps: int = 16  # Euler steps for the periodic grids
    progress: bool = True
    tensorboard: bool = True
    init_from: str = ""  # checkpoint whose weights (EMA if present) start a fresh run
    parallel: str = "ddp"  # ddp (also one process) or fsdp2 (sharded; DCP checkpoints)
    precision: str = "fp32"  # FSDP2: fp32, or bf16 parameters/compute with fp32 gradient reduction
    cpu_offload: bool = False  # FSDP2 on CUDA: shards, gradients and Adam states in host memory
    activation_checkpointing: str = "none"  # none, or blocks: recompute each block in the backward pass
    grad_accum: int = 1  # micro-batches per rank and step; the global batch stays batch_size


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    seed: int = 0
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "digits"})
    data: dict[str, Any] = field(default_factory=lambda: {"name": "digits"})
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "rf"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_override(d: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override to the nested dict ``d`` in place."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    value = read_yaml(raw, f"override {key!r}") if raw.strip() else ""
    parts = key.strip().split(".")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate."""
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        packaged = PACKAGED_CONFIGS / f"{p.stem}.yaml"
        if not p.is_file() and p.suffix in ("", ".yaml") and packaged.is_file():
            p = packaged  # `fastflow train digits` works from any directory
        if not p.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file (invalid UTF-8); want a YAML config") from None
        d = read_yaml(text, str(path))
        if d is None:
            log.warning("%s is empty: every setting takes its default (model digits, data digits, rf)", path)
            d = {}
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for item in overrides:
        apply_override(d, item)
    cfg = build(TrainConfig, d)
    for name in ("model", "data", "objective"):
        if not isinstance(getattr(cfg, name), dict):
            raise ConfigError(f"config key {name!r} must be a mapping")
    _check_ranges(cfg)
    check_sections(cfg)
    return cfg


def check_sections(cfg: TrainConfig) -> None:
    """Type- and range-check the ``model``, ``data`` and ``objective`` sections against their
    schemas (the model config, the dataset's constructor, the objective's options) before
    anything is built or written; ``model.fused`` is stored as the word (YAML reads on/off as booleans)."""
    spec, fused = split_spec(cfg.model)
    if fused == "cpu":
        raise ConfigError("model.fused=cpu: the CPU block kernel is inference-only (no autograd); train with "
                          "model.fused=auto, off or triton (sample, eval, sr, pairs and export take --fused cpu)")
    model_config(spec)
    if "fused" in cfg.model:
        cfg.model["fused"] = fused
    dataset_options(cfg.data)
    name, _ = objective_options(cfg.objective)
    check_compile(cfg.train.compile, cfg.train.parallel, OBJECTIVES[name].not_compilable)


def _check_ranges(cfg: TrainConfig) -> None:
    t, o = cfg.train, cfg.optim
    t.compile = compile_mode(t.compile)
    checks = [
        (bool(cfg.out_dir.strip()), "out_dir must name a directory (an empty one would train into the current one)"),
        ("\0" not in cfg.out_dir, "out_dir must not contain a NUL byte"),
        (0 <= cfg.seed < 2**63, f"seed must be in [0, 2**63), got {cfg.seed}"),
        (t.steps >= 1, "train.steps must be >= 1"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (0.0 <= t.ema_rate < 1.0, "train.ema_rate must be in [0, 1)"),
        (t.amp in AMP_MODES, f"train.amp must be one of {', '.join(AMP_MODES)}, got {t.amp!r}"),
        (t.log_every >= 1 and t.ckpt_every >= 1, "train.log_every and train.ckpt_every must be >= 1"),
        (t.keep_ckpts >= 1, "train.keep_ckpts must be >= 1"),
        (t.sample_every >= 0 and t.sample_n >= 1 and t.sample_steps >= 1, "invalid sample settings"),
        (
            o.lr > 0 and o.warmup >= 0 and o.grad_clip >= 0,
            "optim.lr must be > 0, optim.warmup and optim.grad_clip >= 0",
        ),
        (
            FLOAT32_TINY <= o.eps < 1,
            f"optim.eps must be in [{FLOAT32_TINY:.3g}, 1) (Adam divides by it in float32), got {o.eps:g}",
        ),
        (all(0 <= b < 1 for b in o.betas), f"optim.betas must each be in [0, 1), got {list(o.betas)}"),
        (o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay:g}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    check_options(t.parallel, t.precision, t.activation_checkpointing, t.grad_accum)


def dump_config(cfg: TrainConfig) -> str:
    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)


def resolved(cfg: TrainConfig) -> dict[str, Any]:
    """The whole configuration a run would use, every default filled in: the loop and optimiser
    sections, the model's architecture (a preset expanded) with its kernel path, the data set's
    constructor arguments and the objective's settings (``fastflow config show``). Building the
    objective loads its teacher, if it has one."""
    spec, fused = split_spec(cfg.model)
    arch_config = model_config(spec)[1]
    model = {"arch": resolve_spec(spec)[0], "fused": fused, **dataclasses.asdict(arch_config)}
    objective = build_objective(cfg.objective, num_classes=int(getattr(arch_config, "num_classes", 0) or 0))
    out = cfg.to_dict()
    out.update(model=model, data=dataset_settings(cfg.data),
               objective={"name": cfg.objective.get("name", "rf"), **objective_settings(objective)})
    return out


__all__ = ["LoopConfig", "OptimConfig", "TrainConfig", "apply_override", "dump_config", "load_config", "resolved"]
