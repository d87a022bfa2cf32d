"""Built-in quality metric for the embedded digits data.

A small CNN classifier is trained deterministically on the 16×16 digits on first use (a few
seconds on a CPU) and cached under ``$FASTFLOW_CACHE`` (default ``~/.cache/fastflow``). Its
64-d penultimate features give a **digits FD** (Fréchet distance of samples to the real
digits, lower is better); its predictions give **class coverage** (``exp(entropy)/10`` of the
predicted-class histogram: 1 when all ten digits appear equally often) and a confidence score.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from fastflow.data.digits import digits_tensors
from fastflow.errors import ShapeError
from fastflow.metrics.frechet import frechet_distance, gaussian_stats
from fastflow.models.checkpoint import load_weights
from fastflow.utils.cache import cache_dir
from fastflow.utils.io import atomic_save_tensors

log = logging.getLogger(__name__)

#: v2: trained at a fixed thread count, so every machine scores with the same classifier (why:
#: ``benchmarks/NOTES.md``, "Notes moved out of the code").
VERSION = 2
TRAIN_THREADS = 2


class DigitsClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.features(x))


def _train(epochs: int = 30, seed: int = 0) -> DigitsClassifier:
    x, y = digits_tensors(16)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in tqdm(range(epochs), desc="digits classifier", unit="epoch", leave=False):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            # small random shifts make the features robust to generated-image jitter
            xb = torch.roll(x[idx], shifts=tuple(torch.randint(-1, 2, (2,), generator=g).tolist()),
                            dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


_CACHE: dict[str, object] = {}


def classifier() -> DigitsClassifier:
    """The cached classifier (trained and saved on first use)."""
    if "model" not in _CACHE:
        path = cache_dir() / f"digits_classifier_v{VERSION}.safetensors"
        model = DigitsClassifier()
        if path.is_file():
            load_weights(model, path)
        else:
            log.info("training the digits classifier for FD/coverage once (about a minute on 2 cores; cached in %s)",
                     path)
            threads = torch.get_num_threads()
            torch.set_num_threads(TRAIN_THREADS)  # the same weights whatever thread count the caller uses
            try:
                with torch.random.fork_rng(), torch.enable_grad():
                    model = _train()
            finally:
                torch.set_num_threads(threads)
            atomic_save_tensors(path, model.state_dict())
        _CACHE["model"] = model.eval().requires_grad_(False)
    return _CACHE["model"]  # type: ignore[return-value]


def _check(x: Tensor) -> Tensor:
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 16, 16):
        raise ShapeError(f"digits metrics need [N, 1, 16, 16] images, got {tuple(x.shape)}")
    return x.detach().float().cpu().clamp(-1, 1)


@torch.no_grad()
def real_stats() -> tuple[Tensor, Tensor]:
    if "real" not in _CACHE:
        _CACHE["real"] = gaussian_stats(classifier().features(digits_tensors(16)[0]))
    return _CACHE["real"]  # type: ignore[return-value]


@torch.no_grad()
def digits_scores(x: Tensor) -> dict[str, float]:
    """``{"fd", "coverage", "confidence"}`` of generated digits ``[N, 1, 16, 16]``."""
    x = _check(x)
    clf = classifier()
    feats = clf.features(x)
    probs = clf.fc2(feats).softmax(1)
    hist = torch.bincount(probs.argmax(1), minlength=10).double() / len(x)
    entropy = -(hist[hist > 0] * hist[hist > 0].log()).sum()
    return {"fd": frechet_distance(feats, real_stats()),
            "coverage": float(entropy.exp() / 10),
            "confidence": float(probs.max(1).values.mean())}


@torch.no_grad()
def classify(x: Tensor) -> Tensor:
    """Predicted digit of each image."""
    return classifier()(_check(x)).argmax(1)
