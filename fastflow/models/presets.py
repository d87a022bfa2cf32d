"""Architectures by name: ``build_model({"preset": "slim-15.7m", "num_classes": 10})``.

Parameter counts of the CIFAR-10 presets match the papers within ±5 %
(``tests/test_models.py`` asserts it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fastflow.errors import ConfigError
from fastflow.models.mlp import MLP, MLPConfig
from fastflow.models.sd import SDConfig, SDVelocity
from fastflow.models.unet import UNet, UNetConfig

#: arch name → (module class, config class); ``config.json`` stores the arch name.
ARCHS: dict[str, tuple[type[nn.Module], Any]] = {"unet": (UNet, UNetConfig), "mlp": (MLP, MLPConfig),
                                                 "sd": (SDVelocity, SDConfig)}

PRESETS: dict[str, dict[str, Any]] = {
    # 1-RF teacher of Rectified Flow / SlimFlow on CIFAR-10 (DDPM++), 61.8M.
    "rf-ddpmpp": dict(arch="unet", channels=128, num_res_blocks=4, ch_mult=(1, 2, 2, 2), dropout=0.15),
    # SlimFlow students.
    "slim-27.9m": dict(arch="unet", channels=128, num_res_blocks=2, ch_mult=(1, 2, 2)),
    "slim-15.7m": dict(arch="unet", channels=96, num_res_blocks=2, ch_mult=(1, 2, 2)),
    "slim-7.0m": dict(arch="unet", channels=64, num_res_blocks=2, ch_mult=(1, 2, 2)),
    "slim-3.4m": dict(arch="unet", channels=64, num_res_blocks=1, ch_mult=(1, 1, 2)),
    # Embedded data (16×16 digits): a teacher and a ~4× smaller student.
    "digits": dict(arch="unet", in_channels=1, resolution=16, channels=16, num_res_blocks=1,
                   ch_mult=(1, 2, 4), attn_resolutions=(4,), dropout=0.0),
    "digits-small": dict(arch="unet", in_channels=1, resolution=16, channels=8, num_res_blocks=1,
                         ch_mult=(1, 2, 4), attn_resolutions=(4,), dropout=0.0),
    # 2-D toy.
    "toy2d": dict(arch="mlp", dim=2, hidden=256, depth=3),
    # Unit tests.
    "tiny": dict(arch="unet", in_channels=3, resolution=8, channels=8, num_res_blocks=1,
                 ch_mult=(1, 2), attn_resolutions=(4,), dropout=0.0),
}

#: Parameter counts the papers report (for the preset-size test).
PAPER_PARAMS = {"rf-ddpmpp": 61.8e6, "slim-27.9m": 27.9e6, "slim-15.7m": 15.7e6,
                "slim-7.0m": 7.0e6, "slim-3.4m": 3.4e6}


def resolve_spec(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``{"preset": name, **overrides}`` or ``{"arch": ..., **config}`` → ``(arch, config dict)``."""
    spec = dict(spec)
    preset = spec.pop("preset", None)
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigError(f"unknown model preset {preset!r}; choose from {sorted(PRESETS)}")
        spec = {**PRESETS[preset], **spec}
    arch = spec.pop("arch", "unet")
    if not isinstance(arch, str) or arch not in ARCHS:
        raise ConfigError(f"unknown model arch {arch!r}; choose from {sorted(ARCHS)}")
    return arch, spec


def model_config(spec: dict[str, Any]) -> tuple[type[nn.Module], Any]:
    """The module class and its checked config (types and ranges) for a preset/arch spec."""
    arch, cfg = resolve_spec(spec)
    module_cls, config_cls = ARCHS[arch]
    return module_cls, config_cls.from_dict(cfg)


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Instantiate a model from a preset/arch spec (see :func:`resolve_spec`)."""
    module_cls, config = model_config(spec)
    return module_cls(config)


def sample_shape(model: nn.Module) -> tuple[int, ...]:
    """The shape of one sample the model generates: ``(dim,)`` or ``(C, H, W)``."""
    cfg = model.config
    return (cfg.dim,) if hasattr(cfg, "dim") else (cfg.in_channels, cfg.resolution, cfg.resolution)


def model_kind(config: Any) -> str:
    """``token`` (cross-attention context), ``image`` (channel-concatenated, OFTSR), ``class``
    (label embedding) or ``unconditional``; fields a config lacks (the MLP's) count as 0."""
    if getattr(config, "context_dim", 0):
        return "token"
    if getattr(config, "cond_channels", 0):
        return "image"
    return "class" if getattr(config, "num_classes", 0) else "unconditional"


def random_inputs(model: nn.Module, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Any]:
    """``(x, t, cond)``: a random batch of what ``model`` (a fastflow velocity network) takes — states
    of its sample shape, times in [0, 1), and the condition its kind needs (labels, a low-quality
    image, a token context), all on the model's device."""
    cfg = model.config
    x = torch.randn(batch, *sample_shape(model), generator=generator)
    t = torch.rand(batch, generator=generator)
    kind = model_kind(cfg)
    cond: Any = None
    if kind == "class":
        cond = torch.randint(0, cfg.num_classes, (batch,), generator=generator)
    elif kind == "image":
        cond = {"image": torch.randn(batch, cfg.cond_channels, *x.shape[2:], generator=generator)}
    elif kind == "token":
        cond = {"tokens": torch.randn(batch, 8, cfg.context_dim, generator=generator)}
    device = next(model.parameters()).device
    if isinstance(cond, dict):
        cond = {k: v.to(device) for k, v in cond.items()}
    elif cond is not None:
        cond = cond.to(device)
    return x.to(device), t.to(device), cond


def viewable(model: nn.Module, x: Tensor) -> Tensor:
    """Samples as images: latent models (``sd``) decode through their VAE, others are images already."""
    decode = getattr(model, "decode", None)
    return decode(x) if callable(decode) else x


def arch_of(model: nn.Module) -> str:
    for name, (module_cls, _) in ARCHS.items():
        if isinstance(model, module_cls):  # FSDP2 subclasses the module's class
            return name
    raise ConfigError(f"{type(model).__name__} is not a fastflow architecture")
