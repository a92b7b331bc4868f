"""Coverage, the fitted scale and the reliability curve against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from xanes_utils.calibration import coverage, fit_scale, gaussian_share, rank_correlation, reliability


def test_coverage_counts_points_inside_each_band():
    y = np.array([[0.0, 1.0, 2.0, 3.0]])
    mu = np.zeros((1, 4))
    sigma = np.ones((1, 4))
    # |errors| 0, 1, 2, 3 against sigma 1: inside ±1σ: 0 and 1 (edges count), ±2σ: three, ±3σ: all
    assert coverage(y, mu, sigma) == {1.0: 0.5, 2.0: 0.75, 3.0: 1.0}


def test_zero_sigma_covers_only_exact_points():
    assert coverage(np.array([0.0, 1.0]), np.zeros(2), np.zeros(2), ks=(3.0,)) == {3.0: 0.5}


def test_fit_scale_is_the_gaussian_quantile_over_k():
    z = np.arange(1, 1001) / 100.0  # |error| / sigma = 0.01 .. 10.00
    scale = fit_scale(z, np.zeros_like(z), np.ones_like(z), k=2.0)
    # the 95.45 % quantile (inverted CDF) of 1000 sorted values is the 955th: 9.55; over k = 2
    assert scale == pytest.approx(9.55 / 2)
    assert coverage(z, np.zeros_like(z), scale * np.ones_like(z), ks=(2.0,))[2.0] == pytest.approx(0.955)


def test_gaussian_errors_are_calibrated_and_reliability_follows_the_diagonal():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 2.0, 200_000)
    y = rng.normal(0.0, sigma)
    assert fit_scale(y, np.zeros_like(y), sigma) == pytest.approx(1.0, abs=0.02)
    observed = reliability(y, np.zeros_like(y), sigma, np.array([0.5, 0.9]))
    assert observed == pytest.approx([0.5, 0.9], abs=0.01)
    assert gaussian_share(2.0) == pytest.approx(0.9545, abs=1e-4)
    # overconfident by 2x: the fitted scale finds the factor
    assert fit_scale(y, np.zeros_like(y), sigma / 2) == pytest.approx(2.0, abs=0.05)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        coverage(np.zeros(3), np.zeros(3), np.ones(2))
    with pytest.raises(ValueError, match="non-negative"):
        coverage(np.zeros(2), np.zeros(2), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="positive sigma"):
        fit_scale(np.ones(3), np.zeros(3), np.zeros(3))


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(rank_correlation([1, 2], [1, 2]))
