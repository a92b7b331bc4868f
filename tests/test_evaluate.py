"""Metric functions against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from xanes_utils.evaluate import (
    evaluation_table, flattened_r2, mean_spectra, spectrum_mae, spectrum_mse, spectrum_pearson,
)

T = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
P = np.array([[0.0, 1.0, 3.0], [1.0, 2.0, 1.0]])


def test_per_spectrum_errors():
    assert spectrum_mse(T, P) == pytest.approx([1 / 3, 1 / 3])
    assert spectrum_mae(T, P) == pytest.approx([1 / 3, 1 / 3])


def test_flattened_r2_by_hand():
    # pooled mean 1; SS_tot = 1+0+1+0+0+0 = 2; SS_res = 1 + 1 = 2 -> R^2 = 0
    assert flattened_r2(T, P) == pytest.approx(0.0)
    assert flattened_r2(T, T) == pytest.approx(1.0)


def test_pearson_by_hand():
    r = spectrum_pearson(T, P)
    # [0,1,2] vs [0,1,3]: centred [-1,0,1]·[-4/3,-1/3,5/3] = 3; norms sqrt(2)*sqrt(42/9)
    assert r[0] == pytest.approx(3 / (np.sqrt(2) * np.sqrt(42 / 9)))
    assert np.isnan(r[1])  # constant target


def test_eta_and_table():
    y_true = np.array([[0.0, 1.0], [0.0, 3.0], [1.0, 1.0]])
    y_pred = np.array([[0.0, 1.5], [0.0, 2.5], [1.0, 1.0]])
    elements = ["Fe", "Fe", "Cu"]
    base = mean_spectra(np.array([[0.0, 2.0], [0.0, 2.0], [1.0, 2.0]]), ["Fe", "Fe", "Cu"])
    assert base["Fe"] == pytest.approx([0.0, 2.0])
    table = evaluation_table(y_true, y_pred, elements, base)
    assert list(table.index) == ["Fe", "Cu", "all"]
    # Fe: model MSE 0.125 each, baseline MSE 0.5 each -> eta 4
    assert table.loc["Fe", "eta"] == pytest.approx(4.0)
    assert table.loc["Fe", "n"] == 2
    assert table.loc["all", "mse_median"] == pytest.approx(0.125)
    with pytest.raises(ValueError, match="Zn"):
        evaluation_table(y_true, y_pred, ["Fe", "Fe", "Zn"], base)
