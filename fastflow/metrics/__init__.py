"""Sample-quality metrics: Fréchet distance, digits scores, point-cloud distances."""

from fastflow.metrics.digits import classify, digits_scores
from fastflow.metrics.distribution import mmd_rbf, sliced_wasserstein
from fastflow.metrics.frechet import frechet_distance, gaussian_stats

__all__ = ["classify", "digits_scores", "frechet_distance", "gaussian_stats", "mmd_rbf",
           "sliced_wasserstein"]
