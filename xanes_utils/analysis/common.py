"""What the three studies share: recording a model's responses and the graphs' geometry.

Written against the model's internals contract, never importing the model module:
``model(batch, return_internals=True) -> (out, internals)``, where ``internals`` maps layer
names to graph-level activations [B, n_neurons] and ``"attention_weights"`` to [B, 20, heads].
Graphs carry ``element`` (str), ``z`` [21] (node 0 = absorber, 1..20 neighbours, 0 = dummy),
``dist`` [20] and ``edge_mask`` [20].

The first coordination shell: the real neighbours whose distance is at most ``1.2 * d_min``, where
``d_min`` is the absorber's nearest-neighbour distance.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from xanes_utils.elements import ELEMENTS

log = logging.getLogger(__name__)

#: Number of neighbour slots per graph.
N_NEIGHBOURS = 20
#: A neighbour is in the first shell when its distance is <= FIRST_SHELL_FACTOR * nearest distance.
FIRST_SHELL_FACTOR = 1.2
#: Key of the attention weights in the model's internals (never treated as a layer).
ATTENTION_KEY = "attention_weights"


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


def _ordered_elements(present: Sequence[str]) -> list[str]:
    """Distinct elements of ``present``: the 20 absorbers in Z order, then any others sorted."""
    seen = set(present)
    return [e for e in ELEMENTS if e in seen] + sorted(seen - set(ELEMENTS))


def _model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU when it has none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


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
