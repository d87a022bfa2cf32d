"""The dataset protocol every loader speaks, and the resumable batch stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastflow.errors import ConfigError, DataError
from fastflow.utils.seeding import stream_seed


@dataclass
class Batch:
    """A training batch: data ``x`` (images in [−1, 1] or points), optional labels, for
    teacher pairs the noise ``z`` the teacher mapped to ``x``, and an optional condition image."""

    x: Tensor
    label: Tensor | None = None
    z: Tensor | None = None
    image: Tensor | None = None  # conditioning image (e.g. the degraded input of super-resolution)

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.x), move(self.label), move(self.z), move(self.image))


class Dataset:
    """Random-access data. Subclasses implement ``__len__`` and ``get(indices) → Batch``."""

    num_classes: int = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, indices: Tensor) -> Batch:
        raise NotImplementedError

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.get(torch.zeros(1, dtype=torch.long)).x.shape[1:])

    def provenance(self) -> dict[str, Any] | None:
        """What these data are, by content, for a student's lineage (``fastflow checkpoint info``);
        None for data built in or generated from the config (the config names them)."""
        return None

    @classmethod
    def check_provenance(cls, record: dict[str, Any]) -> tuple[str, str]:
        """``(status, detail)`` of a :meth:`provenance` record against the disk now: ``ok``,
        ``missing`` or ``changed``; ``n/a`` where these data cannot be checked."""
        return "n/a", f"{cls.__name__} records nothing to check"


class ArrayDataset(Dataset):
    """In-memory data: ``uint8`` images (scaled to [−1, 1] per batch) or float arrays."""

    def __init__(self, x: Tensor, label: Tensor | None = None, num_classes: int = 0,
                 name: str = "array") -> None:
        if x.dim() < 2 or len(x) == 0:
            raise DataError(f"{name}: expected a non-empty [N, ...] array, got shape {tuple(x.shape)}")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise DataError(f"{name}: data holds NaN or Inf values")
        if label is not None:
            if label.shape != (len(x),):
                raise DataError(f"{name}: labels have shape {tuple(label.shape)}, expected [{len(x)}]")
            label = label.long()
            num_classes = num_classes or int(label.max()) + 1
            if int(label.min()) < 0 or int(label.max()) >= num_classes:
                raise DataError(f"{name}: labels outside [0, {num_classes})")
        self.x, self.label, self.num_classes = x, label, num_classes if label is not None else 0

    def __len__(self) -> int:
        return len(self.x)

    def get(self, indices: Tensor) -> Batch:
        x = self.x[indices]
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
        return Batch(x, None if self.label is None else self.label[indices])


class BatchStream:
    """Deterministic, resumable stream of batches.

    The data order is one endless concatenation of per-epoch permutations seeded by
    ``(seed, epoch)``. Global step ``s`` takes stream positions ``[s·B·W, (s+1)·B·W)`` and rank
    ``r`` the ``r``-th slice of ``B`` of them, so the batch of any step on any rank is a pure
    function of ``(seed, step, rank, world)``: resuming at step ``s`` needs no saved state.
    """

    #: A batch may repeat each sample at most this many times (a larger one is a config mistake).
    MAX_REPEATS = 64

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        if batch_size > self.MAX_REPEATS * len(dataset):
            raise ConfigError(f"batch size {batch_size} is over {self.MAX_REPEATS}× the dataset's {len(dataset)} "
                              "samples; lower train.batch_size")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world, self.n = rank, world, len(dataset)
        self._perm: tuple[int, Tensor] | None = None

    def _epoch_perm(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(stream_seed(self.seed, epoch))
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def indices(self, step: int) -> Tensor:
        """Dataset indices of ``step``'s batch on this rank: O(batch + dataset) work."""
        pos = (step * self.world + self.rank) * self.batch_size
        end = pos + self.batch_size
        parts = []
        while pos < end:  # one slice per epoch the batch spans
            epoch, offset = divmod(pos, self.n)
            take = min(self.n - offset, end - pos)
            parts.append(self._epoch_perm(epoch)[offset:offset + take])
            pos += take
        return torch.cat(parts)

    def batch(self, step: int) -> Batch:
        return self.dataset.get(self.indices(step))
