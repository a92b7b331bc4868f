"""The paper's local-environment star graph of one absorbing site.

A graph has 21 nodes: node 0 is the absorber, nodes 1..20 are its 20 nearest atoms within
``CUTOFF`` (periodic images included; slots beyond the real neighbours are masked dummies).
The 20 edges run from each neighbour node (source) to the absorber (target), PyG's
source -> target convention, so only the absorber receives messages.

Node features (:func:`orbital_features`): ground-state occupancy of the 59 spatial orbitals of the
19 subshells 1s 2s 2p 3s 3p 3d 4s 4p 4d 4f 5s 5p 5d 5f 6s 6p 6d 7s 7p (sum of 2l + 1 = 59),
two bits per orbital: empty 00, singly occupied ("half") 10, doubly occupied (full) 11 -> 118.
Electrons of a partly filled subshell go into its orbitals by Hund's rule (one electron in every
orbital first, then pairing), so Fe 3d6 gives one full and four half-filled 3d orbitals.
Configurations come from pymatgen's table (``Element.full_electronic_structure``); pymatgen
tabulates none beyond Z = 104, and such elements are rejected.

Edge features (:func:`edge_features`): the distance r (rounded to ``DISTANCE_STEP``) and 64 smooth radial
basis functions (65).

Angular edge features (:func:`angular_features`, ``edge_angular`` [20, 9]): the star graph alone sees
species and distances but not angles (an octahedron and a tetrahedron with equal bond lengths look the
same). For neighbour j, the cosines of the angles j-absorber-k to the other real neighbours k are
smeared over 9 Gaussians on [-1, 1] and summed with weights that favour near neighbours,
``exp(-(r_k - r_min) / ANGLE_DECAY)``. Models use them only with ``ModelConfig(angular=True)``.

``n_neighbours`` (default 20, the paper's) sets the number of neighbour slots of a graph.

Whole-cell composition for the paper's "cell" readout is stored as a fixed-length count vector
``cell_counts`` [1, 119] (atoms of each Z in the unit cell, the absorber excluded), which PyG
batches to [B, 119] without any custom ``__inc__``/``__cat_dim__``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pymatgen.core import Element, Structure
from torch_geometric.data import Data

from xanes_utils.elements import N_POINTS
from xanes_utils.io import read_checksummed, write_checksummed
from xanes_utils.structures import validate_structure

log = logging.getLogger(__name__)

#: Node feature length: 59 orbitals x 2 bits.
NODE_DIM = 118
#: Edge feature length: the distance plus 64 radial basis functions.
EDGE_DIM = 65
#: Neighbour slots per graph.
N_NEIGHBOURS = 20
#: Neighbour cutoff radius (Angstrom).
CUTOFF = 8.0
#: Number of radial basis functions.
N_RBF = EDGE_DIM - 1
#: Largest atomic number indexed by the feature table (row 0 is the dummy / padding element).
MAX_Z = 118
#: Number of angular edge features (Gaussians on cos(angle)).
ANGLE_DIM = 9
#: Decay length (Å) of the weights of other neighbours in the angular features.
ANGLE_DECAY = 0.5
#: Neighbour distances are rounded to this step (Å): far below any physical scale, it makes neighbours that
#: are equivalent up to numerical noise (e.g. after a relaxation that broke the symmetry at 1e-5 Å) identical, so
#: they share a counted slot in the fast model (BENCHMARKS.md, "The records changed with the repack").
DISTANCE_STEP = 1e-4
#: Bumped whenever graph construction changes; part of the cache key.
GRAPH_VERSION = "star-graph/3"
#: Format tag of the on-disk graph cache.
CACHE_FORMAT = "xanes-graph-cache/3"

#: The 19 subshells occupied in ground-state atoms, ordered by (n, l).
SUBSHELLS: tuple[tuple[int, str], ...] = (
    (1, "s"),
    (2, "s"), (2, "p"),
    (3, "s"), (3, "p"), (3, "d"),
    (4, "s"), (4, "p"), (4, "d"), (4, "f"),
    (5, "s"), (5, "p"), (5, "d"), (5, "f"),
    (6, "s"), (6, "p"), (6, "d"),
    (7, "s"), (7, "p"),
)
_L = {"s": 0, "p": 1, "d": 2, "f": 3}
#: Number of spatial orbitals (2l + 1 summed over SUBSHELLS).
N_ORBITALS = sum(2 * _L[l] + 1 for _, l in SUBSHELLS)
assert N_ORBITALS * 2 == NODE_DIM, "59 orbitals x 2 bits must give NODE_DIM"

# RBF constants (paper): centres mu_k in exp(-r) space, common width beta.
_RBF_MU = np.exp(-CUTOFF) + (1.0 - np.exp(-CUTOFF)) * np.arange(N_RBF) / N_RBF
_RBF_BETA = (2.0 / N_RBF * (1.0 - np.exp(-CUTOFF))) ** -2


# ----------------------------------------------------------------------------- node features

def _subshell_bits(l: int, electrons: int) -> list[float]:
    """Two bits per orbital of one subshell holding ``electrons`` (Hund's rule filling)."""
    n_orb = 2 * l + 1
    if not 0 <= electrons <= 2 * n_orb:
        raise ValueError(f"{electrons} electrons do not fit a subshell with l={l}")
    bits: list[float] = []
    for slot in range(n_orb):
        occupancy = int(electrons > slot) + int(electrons > n_orb + slot)
        bits.extend({0: (0.0, 0.0), 1: (1.0, 0.0), 2: (1.0, 1.0)}[occupancy])
    return bits


@lru_cache(maxsize=1)
def _orbital_data() -> tuple[np.ndarray, np.ndarray]:
    """(table [119, 118] float32, tabulated [119] bool), built once from pymatgen."""
    table = np.zeros((MAX_Z + 1, NODE_DIM), np.float32)
    tabulated = np.zeros(MAX_Z + 1, bool)
    tabulated[0] = True  # the dummy element: all orbitals empty
    offsets, start = {}, 0
    for n, l in SUBSHELLS:
        offsets[(n, l)] = start
        start += 2 * (2 * _L[l] + 1)
    for z in range(1, MAX_Z + 1):
        try:
            config = Element.from_Z(z).full_electronic_structure
        except (KeyError, ValueError):
            continue  # pymatgen has no configuration (Z > 104)
        for n, l, electrons in config:
            bits = _subshell_bits(_L[l], int(electrons))
            table[z, offsets[(n, l)]:offsets[(n, l)] + len(bits)] = bits
        tabulated[z] = True
    table.setflags(write=False)
    tabulated.setflags(write=False)
    return table, tabulated


def orbital_table() -> np.ndarray:
    """Read-only [119, 118] float32 table of :func:`orbital_features` (row 0: dummy, all zero).

    Rows of elements pymatgen does not tabulate (Z > 104) are zero; use :func:`orbital_features`
    to get an error for them instead.
    """
    return _orbital_data()[0]


def orbital_features(z: int) -> np.ndarray:
    """Ground-state orbital occupancy of element ``z`` as 118 bits (``z = 0``: the dummy, zeros)."""
    table, tabulated = _orbital_data()
    z = int(z)
    if not 0 <= z <= MAX_Z:
        raise ValueError(f"atomic number {z} outside 0..{MAX_Z}")
    if not tabulated[z]:
        raise ValueError(f"no tabulated ground-state configuration for Z={z} (pymatgen covers Z <= 104)")
    return table[z].copy()


# ----------------------------------------------------------------------------- edge features

def edge_features(r: np.ndarray | float) -> np.ndarray:
    """Distance features (..., 65): r, then phi(r) * exp(-beta (exp(-r) - mu_k)^2), k = 0..63.

    phi = 1 - 6x^5 + 15x^4 - 10x^3 with x = r / 8 (zero at and beyond the cutoff).
    """
    r = np.asarray(r, dtype=np.float64)
    x = np.clip(r / CUTOFF, 0.0, 1.0)
    phi = 1.0 - 6.0 * x**5 + 15.0 * x**4 - 10.0 * x**3
    rbf = phi[..., None] * np.exp(-_RBF_BETA * (np.exp(-r)[..., None] - _RBF_MU) ** 2)
    return np.concatenate([r[..., None], rbf], axis=-1)


def angular_features(vec: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Angular features [n, ANGLE_DIM] of neighbour vectors ``vec`` [n, 3] (absorber -> neighbour, Å)
    with real-slot ``mask`` [n] (see the module docstring); zero rows on dummy slots."""
    vec = np.asarray(vec, np.float64)
    mask = np.asarray(mask, bool)
    out = np.zeros((len(vec), ANGLE_DIM))
    if mask.sum() < 2:
        return out
    r = np.linalg.norm(vec, axis=1)
    unit = np.where(mask[:, None], vec / np.where(r > 0, r, 1.0)[:, None], 0.0)
    cos = np.clip(unit @ unit.T, -1.0, 1.0)  # [n, n]
    weight = np.where(mask, np.exp(-(r - r[mask].min()) / ANGLE_DECAY), 0.0)  # of neighbour k
    pair = mask[:, None] & mask[None, :] & ~np.eye(len(vec), dtype=bool)
    centres = np.linspace(-1.0, 1.0, ANGLE_DIM)
    width = centres[1] - centres[0]
    smear = np.exp(-0.5 * ((cos[..., None] - centres) / (0.5 * width)) ** 2)  # [n, n, A]
    out = (smear * (pair * weight[None, :])[..., None]).sum(1)
    return out


# ----------------------------------------------------------------------------- graphs

def _float32(values: np.ndarray) -> torch.Tensor:
    """``values`` as float32 with magnitudes below float32's smallest normal number set to 0.

    The radial basis functions reach 1e-40 and below, which float32 stores as subnormal numbers; CPUs
    handle those in microcode, and 2.6 % of them in the edge features made a training step 2.5x slower
    (BENCHMARKS.md). Zeroing them changes no feature by more than 1.2e-38.
    """
    out = values.astype(np.float32)
    out[np.abs(out) < np.finfo(np.float32).tiny] = 0.0
    return torch.from_numpy(out)


def _assemble(z: torch.Tensor, dist: torch.Tensor, vec: torch.Tensor, mask: torch.Tensor,
              cell_counts: torch.Tensor, element: str, site: int, y: torch.Tensor | None) -> Data:
    """A :class:`Data` star graph from its compact description (features derived from z, dist, vec)."""
    n = len(dist)
    x = torch.from_numpy(orbital_table()[z.numpy()])  # fancy indexing copies: writable
    edge_attr = _float32(edge_features(dist.double().numpy()))
    edge_attr[~mask] = 0.0
    angular = _float32(angular_features(vec.double().numpy(), mask.numpy()))
    data = Data(
        x=x,
        z=z,
        edge_index=torch.stack([torch.arange(1, n + 1), torch.zeros(n, dtype=torch.long)]),
        edge_attr=edge_attr,
        edge_angular=angular,
        edge_mask=mask,
        dist=dist,
        vec=vec,
        cell_counts=cell_counts.view(1, MAX_Z + 1),
        absorber_z=z[:1].clone(),
        element=element,
        site=int(site),
    )
    if y is not None:
        data.y = y.view(1, -1)
    return data


def _describe(structure: Structure, site: int, name: str, n_neighbours: int = N_NEIGHBOURS
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z [n+1], dist [n] float32, vec [n, 3] float32, edge_mask [n], cell_counts [119]) of
    ``structure[site]`` with ``n = n_neighbours``."""
    validate_structure(structure, name)
    if not 0 <= site < len(structure):
        raise IndexError(f"{name}: site {site} out of range (structure has {len(structure)} sites)")
    neighbours = structure.get_neighbors(structure[site], CUTOFF)
    if not neighbours:
        raise ValueError(f"{name}: absorber site {site} ({structure[site].specie}) has no neighbouring atom "
                         f"within {CUTOFF} A (an isolated atom, or a cell of "
                         f"{' x '.join(f'{x:.4g}' for x in structure.lattice.abc)} A with too few atoms)")
    # Deterministic order: distance (rounded against float noise), then Z, site index and image.
    neighbours.sort(key=lambda nb: (round(float(nb.nn_distance), 6), int(nb.specie.Z), int(nb.index),
                                    tuple(int(i) for i in nb.image)))
    chosen = neighbours[:n_neighbours]
    z = torch.zeros(n_neighbours + 1, dtype=torch.long)
    dist = torch.zeros(n_neighbours, dtype=torch.float32)
    vec = torch.zeros(n_neighbours, 3, dtype=torch.float32)
    mask = torch.zeros(n_neighbours, dtype=torch.bool)
    z[0] = int(structure[site].specie.Z)
    centre = structure[site].coords
    for j, nb in enumerate(chosen):
        z[j + 1] = int(nb.specie.Z)
        dist[j] = round(float(nb.nn_distance) / DISTANCE_STEP) * DISTANCE_STEP
        vec[j] = torch.from_numpy(np.asarray(nb.coords - centre, np.float32))
        mask[j] = True
    counts = torch.zeros(MAX_Z + 1, dtype=torch.long)
    for i, other in enumerate(structure):
        if i != site:
            counts[int(other.specie.Z)] += 1
    return z, dist, vec, mask, counts


def build_graph(structure: Structure, site: int, y: np.ndarray | torch.Tensor | None = None,
                name: str = "structure", n_neighbours: int = N_NEIGHBOURS) -> Data:
    """Star graph of ``structure[site]`` (see the module docstring for the fields); errors start with
    ``name`` (the file or item). The structure is checked by :func:`validate_structure`.

    Fields (n = ``n_neighbours``): ``x`` [n+1, 118] float32, ``z`` [n+1] long (0 = dummy),
    ``edge_index`` [2, n] (neighbour j -> absorber 0), ``edge_attr`` [n, 65] float32 (zero on dummy
    edges), ``edge_angular`` [n, 9] float32, ``edge_mask`` [n] bool, ``dist`` [n] float32 (0 on
    dummies), ``vec`` [n, 3] float32 (absorber -> neighbour, Å), ``cell_counts`` [1, 119] long,
    ``absorber_z`` [1] long, ``element`` str, ``site`` int and ``y`` [1, 111] float32 if given.
    Edge features are computed from the float32 distances and vectors, so a cache round-trip is
    bit-identical.
    """
    z, dist, vec, mask, counts = _describe(structure, site, name, n_neighbours)
    target = None
    if y is not None:
        target = torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(1, -1)
        if target.shape[1] != N_POINTS:
            raise ValueError(f"{name}: target has {target.shape[1]} points; expected {N_POINTS}")
    return _assemble(z, dist, vec, mask, counts, structure[site].specie.symbol, site, target)


def structure_json(item: Any) -> str:
    """Canonical JSON of an item's structure (its stored dict when it has one, to stay lazy)."""
    as_dict = getattr(item, "structure_dict", None)
    if as_dict is None:
        as_dict = item.structure.as_dict()
    return json.dumps(as_dict, sort_keys=True, separators=(",", ":"))


def cache_key(items: Sequence[Any], n_neighbours: int = N_NEIGHBOURS) -> str:
    """SHA-256 over the code version, ``n_neighbours`` and every item's id, site, structure JSON and target."""
    digest = hashlib.sha256(f"{GRAPH_VERSION}|{NODE_DIM}|{EDGE_DIM}|{n_neighbours}|{CUTOFF}".encode())
    for i, item in enumerate(items):
        digest.update(f"|{getattr(item, 'id', i)}|{int(item.site)}|".encode())
        digest.update(structure_json(item).encode())
        mu = getattr(item, "mu", None)
        digest.update(b"none" if mu is None else np.ascontiguousarray(mu, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _pack(graphs: Sequence[Data], key: str) -> dict:
    """The compact cache payload of ``graphs`` (features are rebuilt from z, dist and vec on load)."""
    has_y = all("y" in g for g in graphs)
    tensors = {
        "z": torch.stack([g.z for g in graphs]),
        "dist": torch.stack([g.dist for g in graphs]),
        "vec": torch.stack([g.vec for g in graphs]),
        "edge_mask": torch.stack([g.edge_mask for g in graphs]),
        "cell_counts": torch.cat([g.cell_counts for g in graphs]),
        "site": torch.tensor([g.site for g in graphs], dtype=torch.long),
    }
    if has_y:
        tensors["y"] = torch.cat([g.y for g in graphs])
    return {"format": CACHE_FORMAT, "key": key, "n": len(graphs), "elements": [g.element for g in graphs],
            "tensors": tensors}


def _unpack(payload: Any, key: str, n: int) -> list[Data]:
    """Graphs from a cache payload; raises ValueError if it is malformed or stale."""
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        raise ValueError("not a graph cache")
    if payload.get("key") != key or payload.get("n") != n:
        raise ValueError("stale cache (built from other items or another code version)")
    tensors = payload["tensors"]
    y = tensors.get("y")
    return [_assemble(tensors["z"][i], tensors["dist"][i], tensors["vec"][i], tensors["edge_mask"][i],
                      tensors["cell_counts"][i], payload["elements"][i], int(tensors["site"][i]),
                      None if y is None else y[i])
            for i in range(n)]


def build_graphs(items: Sequence[Any], cache_path: str | Path | None = None, progress: bool = True,
                 n_neighbours: int = N_NEIGHBOURS) -> list[Data]:
    """Star graphs of ``items`` (objects with ``.structure``, ``.site``, ``.mu`` and ``.id``).

    With ``cache_path`` the graphs are stored compactly (``torch.save``, with a SHA-256 sidecar) under a
    key hashing the items and the code version; a matching cache is loaded (``weights_only=True``), a
    stale one is rebuilt, and an unreadable or corrupt one is logged and rebuilt, never used.
    """
    from tqdm import tqdm

    items = list(items)
    key = cache_key(items, n_neighbours) if cache_path is not None else ""
    if cache_path is not None and Path(cache_path).exists():
        try:
            payload = torch.load(io.BytesIO(read_checksummed(cache_path)), map_location="cpu", weights_only=True)
            graphs = _unpack(payload, key, len(items))
            log.info("loaded %d graphs from cache %s", len(graphs), cache_path)
            return graphs
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
            log.warning("graph cache %s not used (%s); rebuilding it", cache_path, exc)
    graphs = []
    for i, item in enumerate(tqdm(items, desc="graphs", unit="graph", disable=not progress)):
        graphs.append(build_graph(item.structure, int(item.site), getattr(item, "mu", None),
                                  name=f"item {getattr(item, 'id', i)}", n_neighbours=n_neighbours))
    if cache_path is not None and graphs and len({"y" in g for g in graphs}) > 1:
        log.warning("some items have a target and some do not; graph cache %s not written", cache_path)
    elif cache_path is not None and graphs:
        buffer = io.BytesIO()
        torch.save(_pack(graphs, key), buffer)
        write_checksummed(cache_path, buffer.getvalue())
        log.info("cached %d graphs in %s", len(graphs), cache_path)
    return graphs
