"""LPIPS distance (Zhang et al.) from the ``lpips`` package, with the backbone from local disk.

The package ships its linear heads; the VGG/AlexNet backbone normally comes from torchvision's
hub, which fastflow never downloads. Give it as ``FASTFLOW_LPIPS_BACKBONE`` (a torchvision
``vgg16``/``alexnet`` state dict, ``.safetensors`` or ``.pth``), or ``backbone="random"`` for
tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from fastflow.errors import CheckpointError, ConfigError, MissingBackendError

ENV = "FASTFLOW_LPIPS_BACKBONE"
# torchvision ``features`` index → LPIPS slice, per backbone.
_SLICES = {"vgg": [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)],
           "alex": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]}


def _backbone_state(path: Path, net: str) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for key, value in raw.items():
        parts = key.split(".")
        if parts[0] != "features":
            continue
        idx = int(parts[1])
        k = next(i for i, (lo, hi) in enumerate(_SLICES[net]) if lo <= idx < hi)
        out[f"slice{k + 1}.{idx}.{parts[2]}"] = value
    if not out:
        raise CheckpointError(f"{path}: no torchvision 'features.*' weights for the LPIPS {net} backbone")
    return out


class LPIPSDistance(nn.Module):
    """Per-sample LPIPS ``d(a, b) → [B]`` for images in [−1, 1] (1-channel inputs are repeated)."""

    def __init__(self, net: str = "vgg", backbone: str | None = None) -> None:
        super().__init__()
        try:
            import lpips
        except ImportError:
            raise MissingBackendError("distance lpips needs the lpips package (pip install 'fastflow[lpips]', "
                                "which needs torchvision)") from None
        if net not in _SLICES:
            raise ConfigError(f"LPIPS backbone must be vgg or alex, got {net!r}")
        backbone = backbone or os.environ.get(ENV)
        if not backbone:
            raise CheckpointError(f"LPIPS backbone weights not found: set {ENV} to a local torchvision "
                                  f"{'vgg16' if net == 'vgg' else 'alexnet'} state dict (nothing is downloaded)")
        self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
        if backbone != "random":
            p = Path(backbone)
            if not p.is_file():
                raise CheckpointError(f"LPIPS backbone file {backbone!r} not found")
            missing, unexpected = self.model.net.load_state_dict(_backbone_state(p, net), strict=False)
            if unexpected or [m for m in missing if "weight" in m or "bias" in m]:
                raise CheckpointError(f"{p}: does not match the LPIPS {net} backbone")
        self.model.requires_grad_(False)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        self.model.to(a.device)
        return self.model(a.float(), b.float()).flatten()
