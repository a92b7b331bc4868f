"""Neuron responses ("Brodmann areas"): which sample properties drive clusters of neurons."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from xanes_utils.analysis.common import N_NEIGHBOURS, _first_shell, _ordered_elements, _stack_graphs, _symbol
from xanes_utils.elements import period

log = logging.getLogger(__name__)

#: Sample properties tested for neuron selectivity (columns of :func:`sample_properties`).
PROPERTIES: tuple[str, ...] = ("element", "period", "coordination", "neighbour")
#: Coordination-number bins (inclusive bounds, label).
CN_BINS: tuple[tuple[int, int, str], ...] = (
    (0, 0, "0"), (1, 3, "1-3"), (4, 4, "4"), (5, 5, "5"), (6, 6, "6"), (7, 8, "7-8"),
    (9, 12, "9-12"), (13, N_NEIGHBOURS, "13-20"),
)


def coordination_bin(cn: int) -> str:
    """Label of the coordination-number bin of ``cn`` (bins: 0, 1-3, 4, 5, 6, 7-8, 9-12, 13-20)."""
    for low, high, label in CN_BINS:
        if low <= cn <= high:
            return label
    raise ValueError(f"coordination number {cn} outside 0..{N_NEIGHBOURS}")


def sample_properties(graphs: Sequence[Any]) -> pd.DataFrame:
    """Per-sample properties for the selectivity analyses, one row per graph (same order).

    Columns: ``element`` (absorber, ordered categorical), ``period`` (4 for Sc..Zn, 5 for Y..Cd),
    ``absorber_z``, ``n_neighbours`` (real neighbours), ``cn`` (coordination number),
    ``coordination`` (bin label of ``cn``: 0, 1-3, 4, 5, 6, 7-8, 9-12, 13-20), ``neighbour`` (dominant
    first-shell species), ``neighbour_z`` and ``first_shell_distance`` (mean first-shell distance, A).

    Rule: the first shell is the real neighbours with distance <= 1.2 * d_min (d_min = nearest
    real neighbour distance) and ``cn`` is their count. The dominant species is the most common
    element of the first shell; a tie goes to the tied species with the nearest atom.
    A graph without real neighbours gets cn 0 and no neighbour species (NaN).
    """
    geo = _stack_graphs(graphs)
    shell = _first_shell(geo.dist, geo.mask)
    cn = shell.sum(axis=1)
    dominant: list[int] = []
    mean_dist = np.full(len(geo.elements), np.nan)
    for i in range(len(geo.elements)):
        zs = geo.z[i, 1:][shell[i]]
        ds = geo.dist[i][shell[i]]
        if zs.size == 0:
            dominant.append(0)
            continue
        counts = Counter(zs.tolist())
        best = max(counts.values())
        tied = [s for s, c in counts.items() if c == best]
        dominant.append(min(tied, key=lambda s: (ds[zs == s].min(), s)))
        mean_dist[i] = ds.mean()
    dominant_z = np.asarray(dominant, dtype=np.int64)
    neighbour = [_symbol(z) if z > 0 else None for z in dominant_z]
    species_order = [_symbol(z) for z in sorted(set(dominant_z.tolist()) - {0})]
    frame = pd.DataFrame({
        "element": pd.Categorical(geo.elements, categories=_ordered_elements(geo.elements)),
        "period": [period(e) for e in geo.elements],
        "absorber_z": geo.z[:, 0],
        "n_neighbours": geo.mask.sum(axis=1),
        "cn": cn,
        "coordination": pd.Categorical([coordination_bin(int(c)) for c in cn],
                                       categories=[label for _, _, label in CN_BINS], ordered=True),
        "neighbour": pd.Categorical(neighbour, categories=species_order),
        "neighbour_z": dominant_z,
        "first_shell_distance": mean_dist,
    })
    frame.index.name = "sample"
    return frame


def neuron_table(responses: Mapping[str, np.ndarray],
                 dead_tol: float = 1e-6) -> tuple[pd.DataFrame, np.ndarray]:
    """Describe each neuron by its standardised response profile across samples.

    A neuron is dead (dropped) when the standard deviation of its responses over samples is at
    most ``dead_tol * (1 + |mean|)``. Returns ``(table, descriptors)``: ``table`` has one row per
    live neuron (``layer`` as ordered categorical, ``unit`` = index within the layer, ``mean``,
    ``std``), aligned with the rows of ``descriptors`` [n_live, n_samples], each row the neuron's
    responses z-scored over samples (population std). ``table.attrs`` holds ``n_dead`` and
    ``dead_per_layer``. Because rows are z-scored, squared Euclidean distance between two
    descriptors is ``2 * n_samples * (1 - Pearson r)``: a correlation geometry.
    """
    frames, blocks, dead = [], [], {}
    layer_names = list(responses)
    n_samples = None
    for layer in layer_names:
        values = np.asarray(responses[layer], dtype=np.float64)
        if n_samples is None:
            n_samples = values.shape[0]
        elif values.shape[0] != n_samples:
            raise ValueError(f"layer {layer!r} has {values.shape[0]} samples, expected {n_samples}")
        mean, std = values.mean(axis=0), values.std(axis=0)
        alive = std > dead_tol * (1.0 + np.abs(mean))
        dead[layer] = int((~alive).sum())
        frames.append(pd.DataFrame({"layer": layer, "unit": np.flatnonzero(alive),
                                    "mean": mean[alive], "std": std[alive]}))
        blocks.append(((values[:, alive] - mean[alive]) / std[alive]).T)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["layer", "unit", "mean", "std"])
    table["layer"] = pd.Categorical(table["layer"], categories=layer_names, ordered=True)
    descriptors = np.concatenate(blocks) if blocks else np.zeros((0, n_samples or 0))
    table.attrs["n_dead"] = int(sum(dead.values()))
    table.attrs["dead_per_layer"] = dead
    log.info("%d live neurons; %d dead dropped (%s)", len(table), table.attrs["n_dead"],
             ", ".join(f"{k} {v}" for k, v in dead.items()))
    return table, descriptors


class NeuronClusters(NamedTuple):
    """Result of :func:`cluster_neurons`."""

    labels: np.ndarray  #: cluster of each neuron, 0 = largest cluster
    k: int  #: chosen number of clusters
    scores: pd.Series  #: mean silhouette per candidate k


def _pca(x: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """PCA scores of ``x`` with at most ``n_components`` components (seeded randomized SVD when few)."""
    from sklearn.decomposition import PCA

    n_components = int(min(n_components, x.shape[0], x.shape[1]))
    solver = "randomized" if n_components < 0.5 * min(x.shape) else "full"
    return PCA(n_components=n_components, svd_solver=solver, random_state=seed).fit_transform(x)


def cluster_neurons(descriptors: np.ndarray, k_range: Sequence[int] = range(2, 13), seed: int = 0,
                    n_components: int | None = 50) -> NeuronClusters:
    """Cluster neurons by k-means on their descriptors; k maximises the mean silhouette score.

    Criterion: for every k in ``k_range`` (restricted to 2..n-1) run k-means (10 seeded
    initialisations) and take the k with the largest mean silhouette (Euclidean, i.e. correlation
    geometry for z-scored profiles); ties go to the smaller k. Clustering and silhouettes use the
    first ``n_components`` principal components of the descriptors (denoises, and is fast: for
    2,800 neurons x 5,000 samples and k = 2..12, ~10 s at 50 components vs ~75 s at full width);
    ``None`` clusters the full profiles. Labels are renumbered by cluster size (0 = largest).
    OpenMP is limited to one thread so results do not depend on thread scheduling.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import pairwise_distances, silhouette_score
    from threadpoolctl import threadpool_limits

    x = np.asarray(descriptors, dtype=np.float64)
    if n_components is not None:
        x = _pca(x, n_components, seed)
    ks = [int(k) for k in k_range if 2 <= k <= x.shape[0] - 1]
    if not ks:
        raise ValueError(f"no k in {list(k_range)} is valid for {x.shape[0]} neurons")
    distances = pairwise_distances(x)
    scores, labels = {}, {}
    with threadpool_limits(limits=1, user_api="openmp"):
        for k in ks:
            fit = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
            labels[k] = fit.labels_
            scores[k] = float(silhouette_score(distances, fit.labels_, metric="precomputed"))
            log.debug("k=%d silhouette %.4f", k, scores[k])
    best = max(ks, key=lambda k: (scores[k], -k))
    sizes = np.bincount(labels[best], minlength=best)
    order = sorted(range(best), key=lambda c: (-sizes[c], int(np.flatnonzero(labels[best] == c)[0])))
    relabel = np.empty(best, dtype=np.int64)
    relabel[order] = np.arange(best)
    log.info("chose k=%d (silhouette %.3f) among k=%d..%d", best, scores[best], ks[0], ks[-1])
    return NeuronClusters(relabel[labels[best]], best, pd.Series(scores, name="silhouette").rename_axis("k"))


def embed_neurons(descriptors: np.ndarray, seed: int = 0, method: str = "tsne", n_pca: int = 50,
                  perplexity: float = 30.0) -> np.ndarray:
    """2-D embedding [n_neurons, 2] of the neuron descriptors (deterministic for a seed).

    ``method="tsne"``: PCA to ``n_pca`` components, then t-SNE (PCA initialisation, perplexity
    ``min(perplexity, (n - 1) / 3)``, one OpenMP thread for reproducibility).
    ``method="pca"``: the first two principal components.
    """
    x = np.asarray(descriptors, dtype=np.float64)
    if method == "pca":
        return _pca(x, 2, seed)
    if method != "tsne":
        raise ValueError(f"method must be 'tsne' or 'pca', not {method!r}")
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    reduced = _pca(x, n_pca, seed)
    perplexity = float(min(perplexity, (x.shape[0] - 1) / 3))
    with threadpool_limits(limits=1, user_api="openmp"):
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                    random_state=seed)
        return tsne.fit_transform(reduced)


def _standardize_rows(values: np.ndarray) -> np.ndarray:
    """Z-score every row over its columns; constant rows are an error."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std(axis=1, keepdims=True)
    if np.any(std <= 0):
        raise ValueError("constant neuron response profiles: drop dead neurons first (neuron_table)")
    return (values - values.mean(axis=1, keepdims=True)) / std


def _categories(series: pd.Series) -> list:
    """Present categories of ``series`` in its categorical order, else sorted."""
    present = set(series.dropna().unique().tolist())
    if isinstance(series.dtype, pd.CategoricalDtype):
        return [c for c in series.cat.categories if c in present]
    return sorted(present)


def _codes(series: pd.Series) -> tuple[np.ndarray, list]:
    """Integer codes (-1 for missing) and the category list of ``series``."""
    categories = _categories(series)
    index = {c: i for i, c in enumerate(categories)}
    codes = np.array([index.get(v, -1) if pd.notna(v) else -1 for v in series.tolist()], dtype=np.int64)
    return codes, categories


def _group_means(values: np.ndarray, codes: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row means [n_rows, n_levels] of ``values`` [n_rows, n] over each level, and level counts."""
    valid = codes >= 0
    onehot = sp.csr_matrix((np.ones(valid.sum()), (np.flatnonzero(valid), codes[valid])),
                           shape=(values.shape[1], n_levels))
    counts = np.asarray(onehot.sum(axis=0)).ravel()
    sums = np.asarray(onehot.T @ values.T).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts, counts


def _epsilon_squared(values: np.ndarray, codes: np.ndarray, n_levels: int) -> np.ndarray:
    """Bias-adjusted eta-squared (epsilon^2) of a one-way grouping, per row of ``values`` [n_rows, n].

    ``epsilon^2 = (SS_between - (C - 1) MS_within) / SS_total`` over samples with a valid code,
    C = number of non-empty levels; NaN when undefined.
    """
    valid = codes >= 0
    v = values[:, valid]
    c = codes[valid]
    means, counts = _group_means(v, c, n_levels)
    present = counts > 0
    n, n_groups = v.shape[1], int(present.sum())
    grand = v.mean(axis=1, keepdims=True)
    ss_total = ((v - grand) ** 2).sum(axis=1)
    ss_between = (counts[present] * (means[:, present] - grand) ** 2).sum(axis=1)
    if n_groups < 2 or n - n_groups < 1:
        return np.full(values.shape[0], np.nan)
    ms_within = (ss_total - ss_between) / (n - n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ss_between - (n_groups - 1) * ms_within) / ss_total


class Enrichment(NamedTuple):
    """Result of :func:`cluster_enrichment`."""

    selectivity: pd.DataFrame  #: clusters x (property, category) selectivity scores
    drivers: pd.DataFrame  #: per-cluster eta^2 of each property and the driving property


def cluster_enrichment(responses_by_neuron: np.ndarray, labels: Sequence[int], properties: pd.DataFrame,
                       layers: Sequence[str] | None = None, columns: Sequence[str] = PROPERTIES,
                       min_samples: int = 3, period_tolerance: float = 0.9) -> Enrichment:
    """What each neuron cluster responds to.

    ``responses_by_neuron`` [n_neurons, n_samples] is z-scored per neuron over samples (the
    descriptors of :func:`neuron_table`; z-scoring is re-applied, so raw profiles work too).

    Selectivity score of cluster c for category v of property P: the mean over c's neurons of
    (mean z-scored response over samples with P = v) - (mean over all samples, = 0): in units of
    the neuron's standard deviation; positive = the cluster fires more for that category.
    Categories with fewer than ``min_samples`` samples are left out. With ``layers`` (one name per
    neuron) the ``("layer", name)`` columns hold instead the share of the cluster's neurons taken
    from that layer (0..1, rows sum to 1): composition, not selectivity.

    Drivers: for each neuron and property, epsilon^2 (eta-squared = between-category variance
    share of the neuron's responses, adjusted for the number of categories so 20 elements are
    not favoured by chance), averaged over the cluster: columns ``eta2_<property>``. ``driver`` is
    the property with the largest value, except that period is named instead of element when
    ``eta2_period >= period_tolerance * eta2_element`` (period is a coarsening of element, so
    element always explains at least as much; the cluster is then a period cluster). Properties
    are correlated (e.g. element and coordination), so each eta^2 is marginal, not unique.
    ``top_category`` is the driver's category with the highest selectivity.
    """
    z = _standardize_rows(responses_by_neuron)
    labels = np.asarray(labels)
    if labels.shape != (z.shape[0],):
        raise ValueError(f"{labels.shape[0]} labels for {z.shape[0]} neurons")
    if len(properties) != z.shape[1]:
        raise ValueError(f"{len(properties)} sample properties for {z.shape[1]} samples")
    clusters = sorted(set(labels.tolist()))
    members = {c: labels == c for c in clusters}
    overall = z.mean(axis=1, keepdims=True)
    blocks, eta = {}, {}
    for prop in columns:
        codes, categories = _codes(properties[prop].reset_index(drop=True))
        means, counts = _group_means(z, codes, len(categories))
        keep = counts >= min_samples
        score = means[:, keep] - overall
        blocks[prop] = pd.DataFrame(
            [score[members[c]].mean(axis=0) for c in clusters], index=clusters,
            columns=pd.MultiIndex.from_tuples([(prop, cat) for cat, k in zip(categories, keep) if k]))
        per_neuron = _epsilon_squared(z, codes, len(categories))
        eta[f"eta2_{prop}"] = [float(np.nanmean(per_neuron[members[c]])) for c in clusters]
    drivers = pd.DataFrame({"n_neurons": [int(members[c].sum()) for c in clusters]}, index=clusters)
    if layers is not None:
        layer_arr = np.asarray([str(x) for x in layers])
        if layer_arr.shape != labels.shape:
            raise ValueError(f"{layer_arr.shape[0]} layer names for {labels.shape[0]} neurons")
        layer_names = list(dict.fromkeys(layer_arr.tolist()))
        share = pd.DataFrame([[float(np.mean(layer_arr[members[c]] == name)) for name in layer_names]
                              for c in clusters], index=clusters,
                             columns=pd.MultiIndex.from_tuples([("layer", n) for n in layer_names]))
        blocks["layer"] = share
        drivers["main_layer"] = share.idxmax(axis=1).map(lambda t: t[1])
        drivers["main_layer_share"] = share.max(axis=1)
    for key, values in eta.items():
        drivers[key] = values
    selectivity = pd.concat(list(blocks.values()), axis=1)
    selectivity.index.name = drivers.index.name = "cluster"
    driver_col, top = [], []
    for c in clusters:
        row = {p: drivers.at[c, f"eta2_{p}"] for p in columns if np.isfinite(drivers.at[c, f"eta2_{p}"])}
        best = max(row, key=row.get) if row else None
        if best == "element" and "period" in row and row["period"] >= period_tolerance * row["element"]:
            best = "period"
        driver_col.append(best)
        block = selectivity.loc[c, best] if best is not None else pd.Series(dtype=float)
        top.append(block.idxmax() if len(block) and block.notna().any() else None)
    drivers["driver"] = driver_col
    drivers["top_category"] = top
    return Enrichment(selectivity, drivers)
