"""The training loop and its configuration."""

from fastflow.train.config import TrainConfig, load_config
from fastflow.train.loop import train

__all__ = ["TrainConfig", "load_config", "train"]
