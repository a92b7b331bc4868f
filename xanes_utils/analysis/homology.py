"""Homology of data: how much one element's samples help another's, and representation similarity."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from xanes_utils.analysis.common import _atomic_number, _ordered_elements
from xanes_utils.elements import ELEMENTS, period

log = logging.getLogger(__name__)

#: Largest n_elements * n_neurons^2 for which representation_similarity stores p x p Gram matrices.
_GRAM_LIMIT = 5e7


def _error_dict(errors: Mapping[str, float], elements: Sequence[str], label: str) -> dict[str, float]:
    """Errors for ``elements`` from an ``evaluate_fn`` result (NaN, with a warning, where missing)."""
    missing = [e for e in elements if e not in errors]
    if missing:
        log.warning("evaluate_fn gave no error for %s (%s)", ", ".join(missing), label)
    return {e: float(errors.get(e, np.nan)) for e in elements}


def _relative_change(value: float, reference: float) -> float:
    """(value - reference) / reference, NaN if the reference is not a positive finite number."""
    if not np.isfinite(reference) or reference <= 0:
        return float("nan")
    return (value - reference) / reference


def _training_sets(elements: list[str], protocol: str) -> dict[str, list[str]]:
    """The training sets of a :func:`homology_matrix` protocol by label ("all", "-B"; "A", "A+B"), in the
    order it trains them."""
    if protocol == "leave_one_out":
        return {"all": list(elements)} | {f"-{b}": [e for e in elements if e != b] for b in elements}
    if protocol == "add_one":
        pairs = {f"{a}+{b}": [a, b] for i, a in enumerate(elements) for b in elements[i + 1:]}
        return {a: [a] for a in elements} | pairs
    raise ValueError(f"protocol must be 'leave_one_out' or 'add_one', not {protocol!r}")


def homology_matrix(train_fn: Callable[[list[str]], Any] | Callable[[list[list[str]]], list[Any]],
                    evaluate_fn: Callable[[Any], Mapping[str, float]], elements: Sequence[str],
                    protocol: str = "leave_one_out", batch: bool = False) -> pd.DataFrame:
    """How much each element's training samples help each other element: H[A, B] (rows A, columns B).

    ``train_fn(elements_subset) -> model`` trains on the samples of those absorbers only;
    ``evaluate_fn(model) -> {element: test error}`` evaluates on every element's fixed test set
    (the caller decides budget, split and metric; lower error is better). With ``batch``,
    ``train_fn(subsets) -> models`` is called once with every training set (in the order below), so that
    it can train them in parallel (e.g. :func:`xanes_utils.train.train_many`).

    ``protocol="leave_one_out"`` (1 + n trainings): a baseline mixed model on all ``elements``,
    then one model without each element B. H[A, B] = (err_A(without B) - err_A(all)) / err_A(all):
    the relative rise of A's error when B's samples are removed (positive = B helps A).
    ``protocol="add_one"`` (n + n(n-1)/2 trainings): single-element models and every pair.
    H[A, B] = (err_A({A}) - err_A({A, B})) / err_A({A}) (positive = B helps A).
    The diagonal is NaN. Training noise enters H directly: repeat runs (e.g. inside ``train_fn``)
    or compare against the spread of baselines trained with different seeds.
    ``attrs["errors"]`` holds the raw errors per training set, ``attrs["baseline"]`` the reference.
    """
    elements = list(elements)
    if len(set(elements)) != len(elements):
        raise ValueError("elements must be distinct")
    sets = _training_sets(elements, protocol)
    trained: list[Any] = []
    if batch:
        log.info("homology: training on %d sets at once", len(sets))
        trained = list(train_fn(list(sets.values())))
        if len(trained) != len(sets):
            raise ValueError(f"train_fn gave {len(trained)} models for {len(sets)} training sets")
    errors: dict[str, dict[str, float]] = {}
    for i, (label, subset) in enumerate(sets.items()):
        if batch:
            model = trained[i]
        else:
            log.info("homology: training on %s", label)
            model = train_fn(subset)
        errors[label] = _error_dict(evaluate_fn(model), elements if protocol == "leave_one_out" else subset, label)
    h = pd.DataFrame(np.nan, index=pd.Index(elements, name="A"), columns=pd.Index(elements, name="B"))
    if protocol == "leave_one_out":
        baseline = errors["all"]
        for b in elements:
            for a in elements:
                if a != b:
                    h.at[a, b] = _relative_change(errors[f"-{b}"][a], baseline[a])
    else:
        baseline = {a: errors[a][a] for a in elements}
        for i, a in enumerate(elements):
            for b in elements[i + 1:]:
                h.at[a, b] = -_relative_change(errors[f"{a}+{b}"][a], baseline[a])
                h.at[b, a] = -_relative_change(errors[f"{a}+{b}"][b], baseline[b])
    h.attrs["protocol"] = protocol
    h.attrs["baseline"] = baseline
    h.attrs["errors"] = errors
    return h


def _centred_gram(x: np.ndarray) -> np.ndarray:
    """Gram matrix x_c x_c^T of ``x`` [n, p] with columns centred over rows."""
    xc = x - x.mean(axis=0, keepdims=True)
    return xc @ xc.T


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment between representations x [n, p1] and y [n, p2] of the same n rows.

    CKA = ||y_c^T x_c||_F^2 / (||x_c^T x_c||_F ||y_c^T y_c||_F), columns centred over rows
    (Kornblith et al. 2019); 1 for identical representations, invariant to orthogonal transforms
    and isotropic scaling of either argument. NaN if either representation is constant.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if y.ndim == 1:
        y = y[:, None]
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same rows: {x.shape[0]} vs {y.shape[0]}")
    if x.shape[0] <= x.shape[1] + y.shape[1]:
        kx, ky = _centred_gram(x), _centred_gram(y)
        num, den = float((kx * ky).sum()), float(np.linalg.norm(kx) * np.linalg.norm(ky))
    else:
        xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
        num = float(np.linalg.norm(yc.T @ xc) ** 2)
        den = float(np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    return num / den if den > 0 else float("nan")


def representation_similarity(responses_layer: np.ndarray, elements_per_sample: Sequence[str],
                              method: str = "cka", standardize: bool = True, min_samples: int = 3,
                              elements: Sequence[str] | None = None) -> pd.DataFrame:
    """Element x element similarity of the model's representations in one layer.

    Different elements have different samples, so CKA cannot compare them sample by sample;
    the shared axis is the neurons instead. ``method="cka"`` (default): for element A take its
    samples' responses [n_A, p], centre them on A's own mean (removing what separates A from the
    others), and use the transpose [p neurons, n_A] as A's representation of the p neurons; the
    similarity of A and B is linear CKA over the shared neurons,
    <K_A, K_B>_F / (||K_A|| ||K_B||) with K_A the doubly centred p x p within-element neuron
    covariance. It is 1 when A's and B's environments vary along the same neuron combinations
    (a shared encoding), near 0 when they use unrelated neurons.
    ``method="centroid"``: cosine similarity of the element mean activation vectors after
    subtracting the unweighted mean of the element means.
    With ``standardize`` every neuron is first z-scored over all samples (constant neurons are
    dropped) so high-variance neurons do not dominate. Elements with fewer than ``min_samples``
    samples get NaN rows. Order: ``elements`` or the present absorbers in Z order.
    """
    values = np.asarray(responses_layer, dtype=np.float64)
    labels = np.asarray([str(e) for e in elements_per_sample])
    if labels.shape[0] != values.shape[0]:
        raise ValueError(f"{labels.shape[0]} element labels for {values.shape[0]} samples")
    if standardize:
        std = values.std(axis=0)
        live = std > 1e-12
        values = (values[:, live] - values[:, live].mean(axis=0)) / std[live]
    order = list(elements) if elements is not None else _ordered_elements(labels.tolist())
    usable = [e for e in order if (labels == e).sum() >= min_samples]
    sim = pd.DataFrame(np.nan, index=pd.Index(order, name="A"), columns=pd.Index(order, name="B"))
    if not usable:
        return sim
    if method == "cka":
        # M_A [p, n_A]: A's samples centred on A's mean, then each column centred over neurons
        reps = []
        for e in usable:
            within = values[labels == e]
            within = within - within.mean(axis=0)
            reps.append(within.T - within.T.mean(axis=0))
        p = values.shape[1]
        if len(usable) * p * p <= _GRAM_LIMIT:  # <K_A, K_B> from the p x p Gram matrices K_A = M_A M_A^T
            g = np.stack([(m @ m.T).ravel() for m in reps])
            inner = g @ g.T
        else:  # same inner products without p x p matrices: <K_A, K_B> = ||M_A^T M_B||_F^2
            inner = np.array([[np.linalg.norm(ma.T @ mb) ** 2 for mb in reps] for ma in reps])
        norms = np.sqrt(np.diag(inner))
        with np.errstate(invalid="ignore", divide="ignore"):
            matrix = inner / np.outer(norms, norms)
    elif method == "centroid":
        centroids = np.stack([values[labels == e].mean(axis=0) for e in usable])
        centroids = centroids - centroids.mean(axis=0)
        norms = np.linalg.norm(centroids, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            matrix = (centroids @ centroids.T) / np.outer(norms, norms)
    else:
        raise ValueError(f"method must be 'cka' or 'centroid', not {method!r}")
    sim.loc[usable, usable] = matrix
    return sim


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation over pairs where both are finite (NaN if undefined)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    rx, ry = stats.rankdata(x[ok]), stats.rankdata(y[ok])
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _permutation_p(observed: float, null: np.ndarray, tail: str) -> float:
    """Permutation p-value (with the +1 correction) of ``observed`` against the ``null`` draws."""
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or null.size == 0:
        return float("nan")
    if tail == "less":
        extreme = null <= observed
    elif tail == "greater":
        extreme = null >= observed
    else:
        centre = null.mean()
        extreme = np.abs(null - centre) >= abs(observed - centre)
    return float((1 + extreme.sum()) / (1 + null.size))


def homology_vs_distance(matrix: pd.DataFrame | np.ndarray, elements: Sequence[str] | None = None,
                         n_permutations: int = 2000, seed: int = 0) -> dict[str, float]:
    """Test the paper's claim that mutual learning is strongest between close elements of one period.

    Over ordered off-diagonal pairs (A, B) of H (rows A, columns B; NaNs ignored):
    ``rho_same_period``: Spearman correlation between H[A, B] and |Z_A - Z_B| for same-period pairs
    (the claim predicts < 0); ``mean_same_period`` / ``mean_cross_period`` and their difference
    ``diff_same_minus_cross`` (claim: > 0); ``rho_cross_period_group``: Spearman between H and the
    group distance for cross-period pairs (do group mates such as Fe/Ru help each other?).
    p-values: permutation test that relabels the elements (the same random permutation applied
    to the rows and columns of H; Z and periods stay with the labels), ``n_permutations`` draws
    from a generator seeded with ``seed``; ``p_*`` are one-sided in the claim's direction
    (rho < 0, diff > 0), ``p_*_two_sided`` two-sided about the permutation mean. Permuting whole
    labels keeps the dependence between the pairs that share an element.
    """
    if isinstance(matrix, pd.DataFrame):
        elements = list(matrix.index) if elements is None else list(elements)
        h = matrix.loc[elements, elements].to_numpy(dtype=np.float64)
    else:
        if elements is None:
            raise ValueError("elements are required with an array matrix")
        elements = list(elements)
        h = np.asarray(matrix, dtype=np.float64)
    n = len(elements)
    if h.shape != (n, n):
        raise ValueError(f"matrix of shape {h.shape} for {n} elements")
    z = np.array([_atomic_number(e) for e in elements])
    per = np.array([period(e) for e in elements])
    group = np.array([ELEMENTS.index(e) % 10 for e in elements])
    off = ~np.eye(n, dtype=bool)
    same = (per[:, None] == per[None, :]) & off
    cross = per[:, None] != per[None, :]
    dz = np.abs(z[:, None] - z[None, :]).astype(np.float64)
    dgroup = np.abs(group[:, None] - group[None, :]).astype(np.float64)

    def statistics(hm: np.ndarray) -> tuple[float, float, float, float, float]:
        """rho same period, mean same, mean cross, difference, rho cross-period group."""
        s, c = hm[same], hm[cross]
        m_same = float(np.nanmean(s)) if np.isfinite(s).any() else float("nan")
        m_cross = float(np.nanmean(c)) if np.isfinite(c).any() else float("nan")
        return (_spearman(s, dz[same]), m_same, m_cross, m_same - m_cross, _spearman(c, dgroup[cross]))

    observed = statistics(h)
    rng = np.random.default_rng(seed)
    null = np.empty((n_permutations, 5))
    for i in range(n_permutations):
        perm = rng.permutation(n)
        null[i] = statistics(h[np.ix_(perm, perm)])
    rho, m_same, m_cross, diff, rho_group = observed
    result = {
        "n_elements": n, "n_same_period_pairs": int(np.isfinite(h[same]).sum()),
        "n_cross_period_pairs": int(np.isfinite(h[cross]).sum()),
        "rho_same_period": rho,
        "p_rho_same_period": _permutation_p(rho, null[:, 0], "less"),
        "p_rho_same_period_two_sided": _permutation_p(rho, null[:, 0], "two"),
        "mean_same_period": m_same, "mean_cross_period": m_cross,
        "diff_same_minus_cross": diff,
        "p_diff": _permutation_p(diff, null[:, 3], "greater"),
        "p_diff_two_sided": _permutation_p(diff, null[:, 3], "two"),
        "rho_cross_period_group": rho_group,
        "p_rho_cross_period_group": _permutation_p(rho_group, null[:, 4], "less"),
        "n_permutations": n_permutations, "seed": seed,
    }
    log.info("homology vs distance: rho=%.3f (p=%.4f), same-cross=%.4f (p=%.4f)",
             rho, result["p_rho_same_period"], diff, result["p_diff"])
    return result
