"""The model family (DDPM++ UNet, a small MLP for 2-D data), presets, and checkpoints."""

from fastflow.models.checkpoint import load_model, save_model
from fastflow.models.layers import Attention, GroupNormAct
from fastflow.models.mlp import MLP, MLPConfig
from fastflow.models.presets import PRESETS, build_model
from fastflow.models.unet import UNet, UNetConfig

__all__ = ["MLP", "PRESETS", "Attention", "GroupNormAct", "MLPConfig", "UNet", "UNetConfig",
           "build_model", "load_model", "save_model"]
