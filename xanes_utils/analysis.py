"""Interpretability analyses of a trained family-bucket model (the paper's three analyses).

Written against the model's internals contract, never importing the model module:
``model(batch, return_internals=True) -> (out, internals)``, where ``internals`` maps layer
names to graph-level activations [B, n_neurons] and ``"attention_weights"`` to [B, 20, heads].
Graphs carry ``element`` (str), ``z`` [21] (node 0 = absorber, 1..20 neighbours, 0 = dummy),
``dist`` [20] and ``edge_mask`` [20].

1. Neuron responses ("Brodmann areas"): :func:`record_responses`, :func:`sample_properties`,
   :func:`neuron_table`, :func:`cluster_neurons`, :func:`embed_neurons`, :func:`cluster_enrichment`.
2. Homology of data: :func:`homology_matrix`, :func:`linear_cka`, :func:`representation_similarity`,
   :func:`homology_vs_distance`.
3. Attention: :func:`attention_table`, :func:`attention_variance_decomposition`.

Shared rule, the first coordination shell: the real neighbours whose distance is at most
``1.2 * d_min``, where ``d_min`` is the absorber's nearest-neighbour distance.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy import stats

from xanes_utils.elements import ELEMENTS, period

log = logging.getLogger(__name__)

__all__ = [
    "FIRST_SHELL_FACTOR", "PROPERTIES", "Enrichment", "NeuronClusters", "attention_table",
    "attention_variance_decomposition", "cluster_enrichment", "cluster_neurons", "coordination_bin",
    "embed_neurons", "homology_matrix", "homology_vs_distance", "linear_cka", "neuron_table",
    "record_responses", "representation_similarity", "sample_properties",
]

#: Number of neighbour slots per graph.
N_NEIGHBOURS = 20
#: A neighbour is in the first shell when its distance is <= FIRST_SHELL_FACTOR * nearest distance.
FIRST_SHELL_FACTOR = 1.2
#: Key of the attention weights in the model's internals (never treated as a layer).
ATTENTION_KEY = "attention_weights"
#: Sample properties tested for neuron selectivity (columns of :func:`sample_properties`).
PROPERTIES: tuple[str, ...] = ("element", "period", "coordination", "neighbour")
#: Coordination-number bins (inclusive bounds, label).
CN_BINS: tuple[tuple[int, int, str], ...] = (
    (0, 0, "0"), (1, 3, "1-3"), (4, 4, "4"), (5, 5, "5"), (6, 6, "6"), (7, 8, "7-8"),
    (9, 12, "9-12"), (13, N_NEIGHBOURS, "13-20"),
)
#: Largest n_elements * n_neurons^2 for which representation_similarity stores p x p Gram matrices.
_GRAM_LIMIT = 5e7


# ----------------------------------------------------------------------------- helpers

@cache
def _symbol(z: int) -> str:
    """Element symbol of atomic number ``z`` (pymatgen)."""
    from pymatgen.core import Element

    return Element.from_Z(int(z)).symbol


@cache
def _atomic_number(symbol: str) -> int:
    """Atomic number of element ``symbol`` (pymatgen)."""
    from pymatgen.core import Element

    return int(Element(symbol).Z)


class _Geometry(NamedTuple):
    """Per-sample arrays stacked from a list of graphs."""

    elements: list[str]
    z: np.ndarray  # [n, 21] int
    dist: np.ndarray  # [n, 20] float64
    mask: np.ndarray  # [n, 20] bool


def _element_of(graph: Any) -> str:
    """The absorbing element of a graph as a plain string."""
    element = graph.element
    if isinstance(element, (list, tuple)) and len(element) == 1:
        element = element[0]
    if not isinstance(element, str):
        raise TypeError(f"graph.element must be a str, got {type(element).__name__}")
    return element


def _stack_graphs(graphs: Sequence[Any]) -> _Geometry:
    """Stack ``z``, ``dist`` and ``edge_mask`` of every graph into arrays."""
    elements, zs, dists, masks = [], [], [], []
    for i, g in enumerate(graphs):
        z = np.asarray(g.z.detach().cpu(), dtype=np.int64).reshape(-1)
        dist = np.asarray(g.dist.detach().cpu(), dtype=np.float64).reshape(-1)
        mask = np.asarray(g.edge_mask.detach().cpu(), dtype=bool).reshape(-1)
        if z.shape != (N_NEIGHBOURS + 1,) or dist.shape != (N_NEIGHBOURS,) or mask.shape != (N_NEIGHBOURS,):
            raise ValueError(f"graph {i}: expected z [21], dist [20], edge_mask [20]; got "
                             f"{z.shape}, {dist.shape}, {mask.shape}")
        elements.append(_element_of(g))
        zs.append(z)
        dists.append(dist)
        masks.append(mask)
    if not elements:
        empty = np.zeros((0, N_NEIGHBOURS))
        return _Geometry([], np.zeros((0, N_NEIGHBOURS + 1), np.int64), empty, empty.astype(bool))
    return _Geometry(elements, np.stack(zs), np.stack(dists), np.stack(masks))


def _first_shell(dist: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Boolean [n, 20]: real neighbours with distance <= FIRST_SHELL_FACTOR * nearest real distance."""
    d = np.where(mask, dist, np.inf)
    d_min = d.min(axis=1, keepdims=True)
    return mask & (d <= d_min * FIRST_SHELL_FACTOR + 1e-9)


def _distance_rank(dist: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rank [n, 20] of each real neighbour by distance (1 = nearest, ties by slot); 0 for dummies."""
    d = np.where(mask, dist, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(1, d.shape[1] + 1), d.shape), axis=1)
    return np.where(mask, ranks, 0)


def coordination_bin(cn: int) -> str:
    """Label of the coordination-number bin of ``cn`` (bins: 0, 1-3, 4, 5, 6, 7-8, 9-12, 13-20)."""
    for low, high, label in CN_BINS:
        if low <= cn <= high:
            return label
    raise ValueError(f"coordination number {cn} outside 0..{N_NEIGHBOURS}")


def _ordered_elements(present: Sequence[str]) -> list[str]:
    """Distinct elements of ``present``: the 20 absorbers in Z order, then any others sorted."""
    seen = set(present)
    return [e for e in ELEMENTS if e in seen] + sorted(seen - set(ELEMENTS))


def _model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU when it has none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------- 1. neuron responses

def _layer_activations(internals: Mapping[str, Any], n_graphs: int) -> dict[str, np.ndarray]:
    """Graph-level activations: every 2-D [n_graphs, n] tensor except the attention weights."""
    layers = {}
    for key, value in internals.items():
        if key == ATTENTION_KEY:
            continue
        if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[0] == n_graphs:
            layers[key] = value.detach().float().cpu().numpy()
        else:
            log.debug("internals[%r] is not a graph-level [B, n] tensor; skipped", key)
    if not layers:
        raise ValueError("the model returned no graph-level [B, n] activations in its internals")
    return layers


def _attention_array(internals: Mapping[str, Any], n_graphs: int) -> np.ndarray:
    """Attention weights as [n_graphs, 20, heads] (accepts [B*20, heads] and single-head [B, 20])."""
    if ATTENTION_KEY not in internals:
        raise KeyError(f"the model's internals have no {ATTENTION_KEY!r}")
    att = internals[ATTENTION_KEY].detach().float().cpu()
    if att.ndim == 2 and att.shape[0] == n_graphs * N_NEIGHBOURS:
        att = att.reshape(n_graphs, N_NEIGHBOURS, -1)
    elif att.ndim == 2 and att.shape == (n_graphs, N_NEIGHBOURS):
        att = att.unsqueeze(-1)
    if att.ndim != 3 or att.shape[:2] != (n_graphs, N_NEIGHBOURS):
        raise ValueError(f"attention weights of shape {tuple(att.shape)}; expected [{n_graphs}, 20, heads]")
    return att.numpy()


def record_responses(model: torch.nn.Module, graphs: Sequence[Any],
                     batch_size: int = 256) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every hidden neuron's graph-level response to every sample, and the attention weights.

    The model runs in eval mode under ``torch.no_grad`` (its previous mode is restored after).
    Returns ``(responses, attention)``: ``responses[layer]`` is [n_samples, n_neurons] (float32) for
    every 2-D [B, n] tensor of the internals except ``"attention_weights"``, in the model's key
    order; ``attention`` is [n_samples, 20, heads]. Samples keep the order of ``graphs``.
    """
    from torch_geometric.loader import DataLoader

    graphs = list(graphs)
    if not graphs:
        raise ValueError("no graphs to record")
    device = _model_device(model)
    was_training = model.training
    chunks: dict[str, list[np.ndarray]] = {}
    attention: list[np.ndarray] = []
    model.eval()
    try:
        with torch.no_grad():
            for batch in DataLoader(graphs, batch_size=batch_size, shuffle=False):
                n_graphs = int(batch.num_graphs)
                _, internals = model(batch.to(device), return_internals=True)
                layers = _layer_activations(internals, n_graphs)
                if chunks and set(layers) != set(chunks):
                    raise ValueError(f"layers changed between batches: {sorted(chunks)} vs {sorted(layers)}")
                for name, values in layers.items():
                    chunks.setdefault(name, []).append(values)
                attention.append(_attention_array(internals, n_graphs))
    finally:
        model.train(was_training)
    responses = {name: np.concatenate(parts) for name, parts in chunks.items()}
    log.info("recorded %d samples: %s; attention heads %d", len(graphs),
             ", ".join(f"{k} {v.shape[1]}" for k, v in responses.items()), attention[0].shape[2])
    return responses, np.concatenate(attention)


def ranked_counts(values: pd.Series, n: int | None = None) -> pd.Series:
    """Counts of each value, most common first and ties by value, so the order never depends on hashing
    (``Series.value_counts`` leaves ties in an order that can change between processes)."""
    counts = values.value_counts().sort_index(kind="stable")
    return counts.sort_values(ascending=False, kind="stable").iloc[:n]


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


# ----------------------------------------------------------------------------- 2. homology of data

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


def homology_matrix(train_fn: Callable[[list[str]], Any], evaluate_fn: Callable[[Any], Mapping[str, float]],
                    elements: Sequence[str], protocol: str = "leave_one_out") -> pd.DataFrame:
    """How much each element's training samples help each other element: H[A, B] (rows A, columns B).

    ``train_fn(elements_subset) -> model`` trains on the samples of those absorbers only;
    ``evaluate_fn(model) -> {element: test error}`` evaluates on every element's fixed test set
    (the caller decides budget, split and metric; lower error is better).

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
    h = pd.DataFrame(np.nan, index=pd.Index(elements, name="A"), columns=pd.Index(elements, name="B"))
    errors: dict[str, dict[str, float]] = {}
    if protocol == "leave_one_out":
        log.info("homology: training the baseline on %d elements", len(elements))
        base = _error_dict(evaluate_fn(train_fn(list(elements))), elements, "baseline")
        errors["all"] = base
        for b in elements:
            subset = [e for e in elements if e != b]
            log.info("homology: training without %s", b)
            err = _error_dict(evaluate_fn(train_fn(subset)), elements, f"without {b}")
            errors[f"-{b}"] = err
            for a in subset:
                h.at[a, b] = _relative_change(err[a], base[a])
        baseline = base
    elif protocol == "add_one":
        baseline = {}
        for a in elements:
            log.info("homology: training on %s alone", a)
            err = _error_dict(evaluate_fn(train_fn([a])), [a], f"{a} alone")
            errors[a] = err
            baseline[a] = err[a]
        for i, a in enumerate(elements):
            for b in elements[i + 1:]:
                log.info("homology: training on %s + %s", a, b)
                err = _error_dict(evaluate_fn(train_fn([a, b])), [a, b], f"{a}+{b}")
                errors[f"{a}+{b}"] = err
                h.at[a, b] = -_relative_change(err[a], baseline[a])
                h.at[b, a] = -_relative_change(err[b], baseline[b])
    else:
        raise ValueError(f"protocol must be 'leave_one_out' or 'add_one', not {protocol!r}")
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


# ----------------------------------------------------------------------------- 3. attention

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
