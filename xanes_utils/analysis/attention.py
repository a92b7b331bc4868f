"""Attention: the weights by absorber, neighbour species and distance, and their variance decomposition."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from xanes_utils.analysis.common import (
    N_NEIGHBOURS, _distance_rank, _first_shell, _ordered_elements, _stack_graphs, _symbol,
)
from xanes_utils.elements import period

log = logging.getLogger(__name__)


def attention_table(attention: np.ndarray, graphs: Sequence[Any]) -> pd.DataFrame:
    """Long table of attention weights: one row per (sample, real edge, head); dummy edges excluded.

    Columns: ``sample``, ``element`` and ``period`` of the absorber, ``head``, ``edge`` (slot 0..19),
    ``rank`` (1 = nearest real neighbour), ``neighbour`` (species) and ``neighbour_z``, ``distance``
    (A), ``shell`` (1 = first shell: distance <= 1.2 * nearest distance; 2 otherwise),
    ``n_neighbours`` (real neighbours), ``weight`` and ``weight_norm = weight * n_neighbours``
    (1 = uniform attention). Logs a warning if weights on dummy edges are not 0 or if a sample's
    weights do not sum to 1 over its real edges.
    """
    geo = _stack_graphs(graphs)
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim == 2:
        att = att[:, :, None]
    n = len(geo.elements)
    if att.ndim != 3 or att.shape[:2] != (n, N_NEIGHBOURS):
        raise ValueError(f"attention of shape {att.shape} for {n} graphs; expected [{n}, 20, heads]")
    heads = att.shape[2]
    dummy = np.abs(att[~geo.mask]).max() if (~geo.mask).any() else 0.0
    if dummy > 1e-6:
        log.warning("attention on dummy edges up to %.3g (expected 0)", dummy)
    sums = np.where(geo.mask[:, :, None], att, 0.0).sum(axis=1)
    has_edges = geo.mask.any(axis=1)
    if has_edges.any() and np.abs(sums[has_edges] - 1).max() > 1e-3:
        log.warning("attention weights over real edges sum to %.4f..%.4f (expected 1)",
                    sums[has_edges].min(), sums[has_edges].max())
    shell = _first_shell(geo.dist, geo.mask)
    rank = _distance_rank(geo.dist, geo.mask)
    n_real = geo.mask.sum(axis=1)
    s_idx, e_idx = np.nonzero(geo.mask)
    sample = np.repeat(s_idx, heads)
    edge = np.repeat(e_idx, heads)
    head = np.tile(np.arange(heads), s_idx.size)
    neighbour_z = geo.z[sample, edge + 1]
    symbols = {int(v): _symbol(int(v)) for v in np.unique(neighbour_z)}
    elements = np.asarray(geo.elements, dtype=object)
    weight = att[sample, edge, head]
    periods = np.array([period(e) for e in geo.elements], dtype=np.int64)
    return pd.DataFrame({
        "sample": sample,
        "element": pd.Categorical(elements[sample], categories=_ordered_elements(geo.elements)),
        "period": periods[sample],
        "head": head,
        "edge": edge,
        "rank": rank[sample, edge],
        "neighbour": pd.Categorical([symbols[int(v)] for v in neighbour_z],
                                    categories=[symbols[k] for k in sorted(symbols)]),
        "neighbour_z": neighbour_z,
        "distance": geo.dist[sample, edge],
        "shell": np.where(shell[sample, edge], 1, 2),
        "n_neighbours": n_real[sample],
        "weight": weight,
        "weight_norm": weight * n_real[sample],
    })


def _one_way_r2(y: np.ndarray, codes: np.ndarray) -> float:
    """Eta-squared of ``y`` for the grouping ``codes`` (share of variance between groups)."""
    counts = np.bincount(codes)
    means = np.bincount(codes, weights=y) / np.maximum(counts, 1)
    ss_total = ((y - y.mean()) ** 2).sum()
    return float(((means[codes] - y.mean()) ** 2).sum() / ss_total) if ss_total > 0 else float("nan")


def _additive_r2(y: np.ndarray, code_list: Sequence[np.ndarray]) -> tuple[float, int]:
    """R^2 and parameter count of an OLS model with an intercept and one-hot terms for each factor."""
    n = y.size
    cols = [sp.csr_matrix(np.ones((n, 1)))]
    for codes in code_list:
        levels = codes.max() + 1
        if levels > 1:
            onehot = sp.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, levels))
            cols.append(onehot[:, 1:])
    x = sp.hstack(cols).tocsr()
    xtx = (x.T @ x).toarray()
    xty = x.T @ y
    beta, _, rank, _ = np.linalg.lstsq(xtx, xty, rcond=None)
    resid = y - x @ beta
    ss_total = ((y - y.mean()) ** 2).sum()
    return (float(1 - (resid ** 2).sum() / ss_total) if ss_total > 0 else float("nan")), int(rank)


def _adjusted(r2: float, n: int, n_params: int) -> float:
    """Adjusted R^2 for ``n_params`` fitted parameters including the intercept."""
    return float(1 - (1 - r2) * (n - 1) / (n - n_params)) if n > n_params else float("nan")


def uniform_attention_heads(table: pd.DataFrame, atol: float = 1e-6) -> list[int]:
    """Heads whose weights are uniform to ``atol`` (std of ``weight_norm`` = weight x neighbours): each
    neighbour gets exactly 1/n, as a saturated tanh score gives; such heads have no variance to decompose."""
    spread = table.groupby("head")["weight_norm"].std()
    return [int(h) for h in spread.index[spread < atol]]


def attention_variance_decomposition(table: pd.DataFrame, value: str = "weight_norm",
                                     factors: Sequence[str] = ("element", "neighbour", "distance_bin"),
                                     n_distance_bins: int = 8, by_head: bool = False,
                                     pairs: Sequence[tuple[str, str]] = (("element", "neighbour"),)
                                     ) -> pd.DataFrame:
    """How much of the attention-weight variance each factor explains.

    ``value`` defaults to ``weight_norm`` (weight x number of real neighbours), so that the 1/n
    scale of a softmax over n neighbours is not counted as an effect. ``distance_bin`` (if asked
    for and absent) is made from ``distance`` by ``n_distance_bins`` quantile bins (equal counts).
    For each factor: ``r2`` = eta-squared of the factor alone (R^2 of a one-way one-hot model)
    and ``delta_r2`` = drop-one loss of R^2 from the additive model (intercept + one-hot of every
    factor), i.e. the variance only that factor explains. Row ``additive``: R^2 of the additive
    model (``delta_r2`` NaN). Row ``interaction``: eta-squared of the full cross-classification
    (every combination of the factors as a cell); its ``delta_r2`` is what the interactions add
    over the additive model. One row per pair in ``pairs``, term ``"a×b"``: the additive model plus a
    one-hot of every (a, b) combination; ``delta_r2`` is its gain over the additive model. A factor
    that is constant within a sample (the absorbing element) has no main effect on ``weight_norm`` by
    construction (each sample's values average to 1); it can only act through such a pair, i.e. by
    changing which neighbours get the weight. Compare ``r2_adj`` of a pair with the ``additive`` row's:
    the many cells are penalised there. ``n_levels`` is the number of levels (cells) or fitted
    parameters. With ``by_head`` one block per head, otherwise heads are pooled (``head`` = "all").
    """
    frame = table
    if "distance_bin" in factors and "distance_bin" not in frame.columns:
        frame = frame.assign(distance_bin=pd.qcut(frame["distance"], q=n_distance_bins, duplicates="drop"))
    groups = frame.groupby("head", observed=True) if by_head else [("all", frame)]
    rows = []
    for head, part in groups:
        y = part[value].to_numpy(dtype=np.float64)
        n = y.size
        codes = {f: pd.factorize(part[f], sort=True)[0] for f in factors}
        if any((c < 0).any() for c in codes.values()):
            raise ValueError("missing values in the decomposition factors")
        r2_full, p_full = _additive_r2(y, [codes[f] for f in factors])
        for f in factors:
            levels = int(codes[f].max() + 1)
            r2 = _one_way_r2(y, codes[f])
            r2_without, _ = _additive_r2(y, [codes[g] for g in factors if g != f])
            rows.append({"head": head, "term": f, "n_levels": levels, "r2": r2,
                         "r2_adj": _adjusted(r2, n, levels), "delta_r2": r2_full - r2_without})
        rows.append({"head": head, "term": "additive", "n_levels": p_full, "r2": r2_full,
                     "r2_adj": _adjusted(r2_full, n, p_full), "delta_r2": np.nan})
        for a, b in pairs:
            pair_codes = pd.factorize(pd.MultiIndex.from_arrays([codes[a], codes[b]]))[0]
            r2_pair, p_pair = _additive_r2(y, [*(codes[f] for f in factors), pair_codes])
            rows.append({"head": head, "term": f"{a}×{b}", "n_levels": p_pair, "r2": r2_pair,
                         "r2_adj": _adjusted(r2_pair, n, p_pair), "delta_r2": r2_pair - r2_full})
        cells = pd.factorize(pd.MultiIndex.from_arrays([codes[f] for f in factors]))[0] \
            if len(factors) > 1 else codes[factors[0]]
        n_cells = int(cells.max() + 1)
        r2_cells = _one_way_r2(y, cells)
        rows.append({"head": head, "term": "interaction", "n_levels": n_cells, "r2": r2_cells,
                     "r2_adj": _adjusted(r2_cells, n, n_cells), "delta_r2": r2_cells - r2_full})
    return pd.DataFrame(rows)
