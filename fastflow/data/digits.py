"""scikit-learn's bundled 8×8 digits (1,797 images), upsampled to 16×16, in [−1, 1], with labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastflow.data.base import ArrayDataset


def digits_tensors(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, 1, size, size] in [−1, 1], labels [N])``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0  # [N, 1, 8, 8] in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1), torch.from_numpy(d.target).long()


class DigitsDataset(ArrayDataset):
    def __init__(self, size: int = 16) -> None:
        x, y = digits_tensors(size)
        super().__init__(x, y, num_classes=10, name="digits")
