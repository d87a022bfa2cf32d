"""Seeded weight initialisation that does not depend on where, or in which pieces, a model is built.

A module constructor draws its weights from the global RNG in construction order, so a model built
block by block (on the meta device, each block materialised and sharded before the next, as FSDP2
training does) would get different weights from one built whole. :func:`init_weights` instead resets
every module that has a ``reset_parameters`` under a seed of its own, derived from the run's seed and
the module's qualified name, children before parents (so a parent's ``reset_parameters`` may
override a child's default, e.g. the UNet's zero output convolution). The result is a pure function
of ``(seed, architecture)``: identical whole or in blocks, on any device, at any world size.
"""

from __future__ import annotations

import torch
from torch import nn

from fastflow.utils.seeding import derive_seed


def reset_module(module: nn.Module, seed: int, name: str) -> None:
    """``module.reset_parameters()`` (its own parameters only) under :func:`derive_seed` of its
    qualified ``name``; the global RNG is left as it was."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(derive_seed(seed, name))
            reset()


def init_weights(module: nn.Module, seed: int, prefix: str = "") -> None:
    """:func:`reset_module` every submodule of ``module``, children before parents (named as in the
    whole model: ``prefix`` is ``module``'s own name there)."""
    for name, m in reversed(list(module.named_modules(prefix=prefix))):
        reset_module(m, seed, name)
