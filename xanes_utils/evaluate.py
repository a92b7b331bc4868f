"""Metrics of the paper and of OmniXAS, per element and overall, as pandas tables.

* flattened R²: every test spectrum's points pooled into one vector (the paper's number);
* per-spectrum MSE and MAE (median and mean) and Pearson r (median);
* η = median MSE of the mean-spectrum baseline / median MSE of the model, the baseline being the mean
  training spectrum of the same absorbing element (η > 1: better than always predicting the mean).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from xanes_utils.elements import ELEMENTS


def flattened_r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """R² over all points of all spectra pooled together."""
    t, p = np.ravel(y_true), np.ravel(y_pred)
    return float(1.0 - np.sum((t - p) ** 2) / np.sum((t - t.mean()) ** 2))


def spectrum_mse(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Mean squared error of each spectrum (rows)."""
    return np.mean((np.atleast_2d(y_true) - np.atleast_2d(y_pred)) ** 2, axis=1)


def spectrum_mae(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Mean absolute error of each spectrum (rows)."""
    return np.mean(np.abs(np.atleast_2d(y_true) - np.atleast_2d(y_pred)), axis=1)


def spectrum_pearson(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation of each predicted spectrum with its target (NaN for a constant row)."""
    t = np.atleast_2d(y_true) - np.atleast_2d(y_true).mean(axis=1, keepdims=True)
    p = np.atleast_2d(y_pred) - np.atleast_2d(y_pred).mean(axis=1, keepdims=True)
    denom = np.sqrt(np.sum(t**2, axis=1) * np.sum(p**2, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(t * p, axis=1) / denom


def mean_spectra(y: np.ndarray, elements: Sequence[str]) -> dict[str, np.ndarray]:
    """Mean spectrum per absorbing element (the baseline, computed on the training split)."""
    elements = np.asarray(elements)
    return {el: np.asarray(y)[elements == el].mean(axis=0) for el in dict.fromkeys(elements.tolist())}


def _row(y_true: np.ndarray, y_pred: np.ndarray, y_base: np.ndarray) -> dict:
    mse, base = spectrum_mse(y_true, y_pred), spectrum_mse(y_true, y_base)
    return {
        "n": len(y_true), "r2_flat": flattened_r2(y_true, y_pred),
        "mse_median": float(np.median(mse)), "mse_mean": float(np.mean(mse)),
        "mae_median": float(np.median(spectrum_mae(y_true, y_pred))),
        "mae_mean": float(np.mean(spectrum_mae(y_true, y_pred))),
        "pearson_median": float(np.nanmedian(spectrum_pearson(y_true, y_pred))),
        "baseline_mse_median": float(np.median(base)),
        "baseline_r2_flat": flattened_r2(y_true, y_base),
        "eta": float(np.median(base) / np.median(mse)),
    }


def evaluation_table(y_true: np.ndarray, y_pred: np.ndarray, elements: Sequence[str],
                     baseline: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per-element metrics (rows in Z order) plus an ``all`` row; ``baseline`` maps element → mean spectrum.

    Elements of the test set without a baseline (absent from training) are rejected.
    """
    y_true, y_pred, elements = np.asarray(y_true), np.asarray(y_pred), np.asarray(elements)
    missing = sorted(set(elements.tolist()) - set(baseline))
    if missing:
        raise ValueError(f"no training-split mean spectrum for {missing}: cannot compute eta")
    y_base = np.stack([baseline[el] for el in elements])
    rows = {el: _row(y_true[elements == el], y_pred[elements == el], y_base[elements == el])
            for el in ELEMENTS if np.any(elements == el)}
    rows["all"] = _row(y_true, y_pred, y_base)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "element"
    return table
