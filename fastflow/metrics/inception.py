"""Inception-v3 pool features for FID, from ``pytorch-fid`` with weights on local disk.

Set ``FASTFLOW_INCEPTION_WEIGHTS`` to the FID Inception file
(``pt_inception-2015-12-05-6726825d.pth``); nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from fastflow.errors import CheckpointError, MissingBackendError

ENV = "FASTFLOW_INCEPTION_WEIGHTS"


def inception_features() -> nn.Module:
    """A module mapping images in [−1, 1] ``[N, 3, H, W]`` to 2048-d pool features."""
    try:
        from pytorch_fid import inception as fid_inception
    except ImportError:
        raise MissingBackendError("Inception FID needs pytorch-fid (pip install pytorch-fid torchvision)") from None
    path = os.environ.get(ENV)
    if not path or not Path(path).is_file():
        raise CheckpointError(f"Inception weights not found: set {ENV} to a local "
                              "pt_inception-2015-12-05-6726825d.pth (nothing is downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    original = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *a, **k: state
    try:
        net = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                                        normalize_input=False)
    finally:
        fid_inception.load_state_dict_from_url = original

    class _Pool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net.eval()

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)[0].flatten(1)

    return _Pool()
