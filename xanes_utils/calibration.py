"""Calibration of predicted uncertainties: coverage of ±kσ bands, a fitted scale, reliability curves.

Points are the energy points of every spectrum (``y``, ``mu``, ``sigma`` of one shape, e.g. [n, 111]).
A point is covered at k when ``|y - mu| <= k sigma`` (a point with zero error and zero σ is covered).
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf, erfinv
from scipy.stats import spearmanr

#: Nominal central-interval probabilities of the reliability curve.
LEVELS = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.683, 0.7, 0.8, 0.9, 0.954, 0.99, 0.997])


def gaussian_share(k: float) -> float:
    """Share of a Gaussian within ±k standard deviations (0.683, 0.954, 0.997 for k = 1, 2, 3)."""
    return float(erf(k / np.sqrt(2.0)))


def _z(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """|y - mu| / sigma per point, flattened; 0 where both are 0, inf where only sigma is 0."""
    y, mu, sigma = (np.asarray(a, float).ravel() for a in (y, mu, sigma))
    if not (y.shape == mu.shape == sigma.shape):
        raise ValueError(f"y, mu and sigma must have one shape, got {y.size}, {mu.size}, {sigma.size} points")
    if np.any(sigma < 0) or not np.all(np.isfinite(sigma)):
        raise ValueError("sigma must be finite and non-negative")
    err = np.abs(y - mu)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(err == 0, 0.0, err / sigma)


def coverage(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, ks: tuple[float, ...] = (1.0, 2.0, 3.0)
             ) -> dict[float, float]:
    """Share of points inside ``mu ± k sigma`` for each k."""
    z = _z(y, mu, sigma)
    return {float(k): float(np.mean(z <= k)) for k in ks}


def fit_scale(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, k: float = 2.0) -> float:
    """The factor s for which ``mu ± k s sigma`` covers the Gaussian share of points at k (95.4 % at k = 2):
    the matching quantile of |y - mu| / sigma over k. A quantile, not a variance ratio, so a few large
    errors do not widen every band."""
    z = _z(y, mu, sigma)
    if not np.isfinite(z).any():
        raise ValueError("no point with a positive sigma to calibrate on")
    scale = float(np.quantile(z, gaussian_share(k), method="inverted_cdf")) / k
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"calibration failed: the quantile of |error|/sigma is {scale * k}")
    return scale


def reliability(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, levels: np.ndarray = LEVELS) -> np.ndarray:
    """Observed share of points inside the Gaussian central interval of each nominal ``level``
    (k = sqrt(2) erfinv(level)); a calibrated model follows the diagonal."""
    z = _z(y, mu, sigma)
    return np.array([np.mean(z <= np.sqrt(2.0) * erfinv(p)) for p in levels])


def rank_correlation(score: np.ndarray, error: np.ndarray) -> float:
    """Spearman correlation between a per-structure score and its error (NaN for fewer than 3 pairs)."""
    score, error = np.asarray(score, float), np.asarray(error, float)
    if score.size < 3:
        return float("nan")
    return float(spearmanr(score, error).statistic)
