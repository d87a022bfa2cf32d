"""Metrics against closed forms: Fréchet distance, MMD, sliced W2; the digits classifier."""

import pytest
import torch

from fastflow.data.digits import digits_tensors
from fastflow.metrics import classify, digits_scores, frechet_distance, mmd_rbf, sliced_wasserstein


def test_frechet_closed_form() -> None:
    # N(μ1, diag(a)) vs N(μ2, diag(b)): FD = |μ1 − μ2|² + Σ (√a − √b)²
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([4.0, 1.0, 0.25])
    fd = frechet_distance((mu1.double(), torch.diag(a).double()), (mu2.double(), torch.diag(b).double()))
    assert fd == pytest.approx(5.0 + 1.0 + 1.0, rel=1e-9)
    # from samples: close to the closed form, and ~0 for the same set
    g = torch.Generator().manual_seed(0)
    xa = mu1 + a.sqrt() * torch.randn(200_000, 3, generator=g)
    xb = mu2 + b.sqrt() * torch.randn(200_000, 3, generator=g)
    assert frechet_distance(xa, xb) == pytest.approx(7.0, rel=0.02)
    assert frechet_distance(xa, xa) < 1e-6


def test_point_cloud_distances() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(800, 2, generator=g), torch.randn(800, 2, generator=g)
    shifted = y + torch.tensor([3.0, 0.0])
    assert abs(mmd_rbf(x, y)) < 0.01 < mmd_rbf(x, shifted)
    # sliced W2 of a pure shift s is |s|·sqrt(E[cos²θ]) = |s|/√2 over random directions in 2-D
    assert sliced_wasserstein(x, shifted, projections=2000) == pytest.approx(3 / 2**0.5, rel=0.05)
    assert sliced_wasserstein(x, y) < 0.15


def test_digits_metric_separates_real_from_noise() -> None:
    x, y = digits_tensors()
    assert float((classify(x) == y).float().mean()) > 0.97
    real = digits_scores(x[:900])
    noise = digits_scores(torch.rand(900, 1, 16, 16) * 2 - 1)
    blurred = digits_scores(torch.nn.functional.avg_pool2d(x[:900], 3, 1, 1))
    assert real["fd"] < blurred["fd"] < noise["fd"]
    assert real["coverage"] > 0.95 and noise["coverage"] < real["coverage"]


@pytest.mark.slow  # ~23 s: the classifier trained twice
def test_digits_classifier_is_the_same_whatever_the_callers_thread_count(tmp_path, monkeypatch) -> None:
    """The classifier behind digits FD is trained at a fixed thread count: a 1- and a 2-thread caller
    get the same weights (and so the same FD for the same samples), and keep their own count."""
    from fastflow.metrics import digits

    states = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            monkeypatch.setenv("FASTFLOW_CACHE", str(tmp_path / f"t{n}"))
            monkeypatch.setattr(digits, "_CACHE", {})
            torch.set_num_threads(n)
            states.append(digits.classifier().state_dict())
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
