"""Star-graph construction: neighbours, orbital and distance features, padding, errors, cache."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from xanes_utils.graphs import (
    CUTOFF, EDGE_DIM, N_NEIGHBOURS, N_ORBITALS, NODE_DIM, build_graph, build_graphs, edge_features,
    orbital_features, orbital_table,
)


def nio(a: float = 4.17) -> Structure:
    """Conventional rock-salt NiO cell (4 Ni + 4 O)."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Ni", "O"], [[0, 0, 0], [0.5] * 3])


def square_planar_cluster() -> Structure:
    """NiO4 square in a 30 A box: 4 neighbours within 8 A, no periodic image closer than 22 A."""
    coords = [[15, 15, 15], [17, 15, 15], [13, 15, 15], [15, 17, 15], [15, 13, 15]]
    return Structure(Lattice.cubic(30.0), ["Ni", "O", "O", "O", "O"], coords, coords_are_cartesian=True)


@dataclass
class Item:
    id: str
    structure: Structure
    site: int
    mu: np.ndarray


def test_constants_and_orbital_count():
    assert (NODE_DIM, EDGE_DIM, N_NEIGHBOURS, CUTOFF) == (118, 65, 20, 8.0)
    assert N_ORBITALS == 59


def test_rocksalt_nio_neighbours_distances_and_features():
    a = 4.17
    g = build_graph(nio(a), 0)
    assert g.element == "Ni" and g.site == 0 and g.absorber_z.tolist() == [28]
    assert g.x.shape == (21, 118) and g.x.dtype == torch.float32
    assert g.edge_attr.shape == (20, 65) and g.edge_attr.dtype == torch.float32
    assert g.edge_index.tolist() == [list(range(1, 21)), [0] * 20]  # neighbour j -> absorber 0
    assert g.edge_mask.all()
    # 6 O at a/2, 12 Ni at a/sqrt2, then 2 of the 8 O at a sqrt3 / 2
    assert g.z.tolist() == [28] + [8] * 6 + [28] * 12 + [8] * 2
    expected = [a / 2] * 6 + [a / math.sqrt(2)] * 12 + [a * math.sqrt(3) / 2] * 2
    assert np.allclose(g.dist.numpy(), expected, atol=1e-5)
    assert torch.equal(g.x[0], torch.from_numpy(orbital_features(28)))
    assert torch.equal(g.x[1], torch.from_numpy(orbital_features(8)))
    assert np.allclose(g.edge_attr.numpy(), edge_features(g.dist.numpy().astype(np.float64)), atol=1e-6)
    counts = g.cell_counts.view(-1)  # the other atoms of the cell: 3 Ni + 4 O
    assert g.cell_counts.shape == (1, 119) and counts[28] == 3 and counts[8] == 4 and counts.sum() == 7
    again = build_graph(nio(a), 0)  # deterministic, ties included
    assert torch.equal(again.z, g.z) and torch.equal(again.dist, g.dist)


def test_features_hold_no_subnormal_floats():
    """Subnormal float32 values (the far tails of the radial basis) slow CPU arithmetic ~50x; they are zeroed."""
    tiny = torch.finfo(torch.float32).tiny
    raw = edge_features(np.linspace(1.5, 7.9, 200)).astype(np.float32)
    assert ((raw != 0) & (np.abs(raw) < tiny)).any()  # the raw float32 cast has them
    g = build_graph(nio(4.17), 0)
    for values in (g.edge_attr, g.edge_angular):
        assert not ((values != 0) & (values.abs() < tiny)).any()


def test_padding_with_masked_dummies():
    g = build_graph(square_planar_cluster(), 0, y=np.linspace(0, 1, 111))
    assert g.edge_mask.tolist() == [True] * 4 + [False] * 16
    assert g.z.tolist() == [28, 8, 8, 8, 8] + [0] * 16
    assert np.allclose(g.dist[:4].numpy(), 2.0) and not g.dist[4:].any()
    assert not g.x[5:].any() and not g.edge_attr[4:].any() and g.edge_attr[:4].any()
    assert g.y.shape == (1, 111) and g.y.dtype == torch.float32
    assert g.cell_counts.view(-1)[8] == 4


def test_build_graph_errors():
    disordered = nio()
    disordered.replace_species({"Ni": {"Ni": 0.5, "Co": 0.5}})
    with pytest.raises(ValueError, match="disordered"):
        build_graph(disordered, 0)
    lonely = Structure(Lattice.cubic(20.0), ["Fe"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="no neighbouring atom within 8"):
        build_graph(lonely, 0)
    with pytest.raises(IndexError):
        build_graph(nio(), 99)
    with pytest.raises(ValueError, match="111"):
        build_graph(nio(), 0, y=np.zeros(50))


def test_orbital_features_fe_zn_and_electron_count():
    fe = orbital_features(26).reshape(59, 2)
    # 1s 2s 2p 3s 3p: 9 full orbitals; 3d6: one full + four half (Hund); 4s2 full; rest empty
    assert (fe[:9] == [1, 1]).all()
    assert fe[9:14].tolist() == [[1, 1]] + [[1, 0]] * 4
    assert fe[14].tolist() == [1, 1] and not fe[15:].any()
    zn = orbital_features(30).reshape(59, 2)
    assert (zn[:15] == [1, 1]).all() and not zn[15:].any()  # ... 3d10 4s2
    pd = orbital_features(46).reshape(59, 2)  # [Kr] 4d10 5s0: 4d (orbitals 18..22) full, 5s empty
    assert (pd[18:23] == [1, 1]).all() and not pd[30].any()
    table = orbital_table()
    assert table.shape == (119, 118) and not table[0].any()
    # bits sum to the number of electrons (full orbital 11 = 2, half 10 = 1) for every tabulated Z
    assert all(table[z].sum() == z for z in range(1, 105))
    with pytest.raises(ValueError, match="configuration"):
        orbital_features(110)
    with pytest.raises(ValueError):
        orbital_features(119)


def test_rbf_against_hand_computed_values():
    # r = 2: x = 0.25, phi = 1 - 6/1024 + 15/256 - 10/64 = 0.896484375
    e8 = math.exp(-8.0)
    beta = (2.0 / 64.0 * (1.0 - e8)) ** -2
    k = 10
    mu = e8 + (1 - e8) * k / 64
    expected = 0.896484375 * math.exp(-beta * (math.exp(-2.0) - mu) ** 2)
    f = edge_features(2.0)
    assert f.shape == (65,) and f[0] == 2.0
    assert math.isclose(f[1 + k], expected, rel_tol=1e-12)
    # at r = 0: phi = 1 and the last centre sits (1 - e^-8)/64 below exp(0) = 1, i.e. beta * d^2 = 1/4
    assert math.isclose(edge_features(0.0)[64], math.exp(-0.25), rel_tol=1e-12)
    # where exp(-r) hits centre 32 the basis function equals phi; its neighbours are exp(-1/4) phi
    r = -math.log(e8 + (1 - e8) * 32 / 64)
    x = r / 8
    phi = 1 - 6 * x**5 + 15 * x**4 - 10 * x**3
    f = edge_features(r)
    assert math.isclose(f[33], phi, rel_tol=1e-12)
    assert math.isclose(f[32], phi * math.exp(-0.25), rel_tol=1e-9)
    assert math.isclose(f[34], phi * math.exp(-0.25), rel_tol=1e-9)
    assert not edge_features(8.0)[1:].any() and not edge_features(9.0)[1:].any()  # cutoff
    assert edge_features(np.ones((3, 4))).shape == (3, 4, 65)  # vectorised


def test_build_graphs_cache_round_trip_and_corruption(tmp_path, caplog):
    items = [Item("a", nio(), 0, np.linspace(0, 1, 111)), Item("b", nio(), 4, np.zeros(111)),
             Item("c", square_planar_cluster(), 0, np.ones(111))]
    path = tmp_path / "graphs.pt"
    built = build_graphs(items, cache_path=path, progress=False)
    assert path.exists()

    def same(gs):
        return all(torch.equal(g[k], h[k]) for g, h in zip(gs, built)
                   for k in ("x", "z", "edge_index", "edge_attr", "edge_mask", "dist", "cell_counts", "y"))

    with caplog.at_level(logging.INFO, logger="xanes_utils.graphs"):
        loaded = build_graphs(items, cache_path=path, progress=False)
    assert "loaded 3 graphs" in caplog.text and same(loaded)
    assert [g.element for g in loaded] == ["Ni", "O", "Ni"] and [g.site for g in loaded] == [0, 4, 0]

    caplog.clear()
    path.write_bytes(path.read_bytes()[:100])  # truncated file
    with caplog.at_level(logging.WARNING, logger="xanes_utils.graphs"):
        assert same(build_graphs(items, cache_path=path, progress=False))
    assert "not used" in caplog.text

    def tamper(edit):
        payload = torch.load(path, weights_only=True)
        edit(payload)
        torch.save(payload, path)  # the sidecar checksum is not updated
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="xanes_utils.graphs"):
            rebuilt = build_graphs(items, cache_path=path, progress=False)
        assert "SHA-256 does not match graphs.pt.sha256" in caplog.text and same(rebuilt)
        return rebuilt

    tamper(lambda p: p["tensors"]["y"].__setitem__((0, 0), 42.0))
    labels = tamper(lambda p: p["elements"].__setitem__(0, "Nh"))  # an element label, not a tensor
    assert [g.element for g in labels] == ["Ni", "O", "Ni"]

    caplog.clear()
    items[0].mu = np.full(111, 0.5)  # other targets: stale key, rebuilt
    with caplog.at_level(logging.WARNING, logger="xanes_utils.graphs"):
        fresh = build_graphs(items, cache_path=path, progress=False)
    assert "stale" in caplog.text and torch.allclose(fresh[0].y, torch.full((1, 111), 0.5))


def test_angular_features_tell_octahedron_from_tetrahedron():
    from xanes_utils.graphs import ANGLE_DIM, angular_features

    octahedral = build_graph(nio(4.17), 0)  # Ni: 6 O at 2.085 A, 12 Ni at 2.95 A, ...
    tetrahedral = build_graph(Structure.from_spacegroup("F-43m", Lattice.cubic(4.17 * 2 / np.sqrt(3)), ["Ni", "O"],
                                                        [[0, 0, 0], [0.25] * 3]), 0)  # 4 O at 2.085 A
    assert octahedral.edge_angular.shape == (20, ANGLE_DIM)
    centres = np.linspace(-1, 1, ANGLE_DIM)
    oct_first = octahedral.edge_angular[0].numpy()  # an O: 4 O at 90 degrees, 1 at 180
    tet_first = tetrahedral.edge_angular[0].numpy()  # an O: 3 O at 109.5 degrees (cos -1/3)
    assert centres[np.argmax(oct_first)] == pytest.approx(0.0)
    assert abs(centres[np.argmax(tet_first)] + 1 / 3) <= 0.125
    # hand check: for a lone pair of neighbours at 90 degrees and equal distance, one unit of weight in the
    # central Gaussian
    vec = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 0]])
    feats = angular_features(vec, np.array([True, True, False]))
    assert feats[0, ANGLE_DIM // 2] == pytest.approx(1.0) and not feats[2].any()


def test_more_neighbour_slots_extend_the_same_ordering():
    g20, g32 = build_graph(nio(), 0), build_graph(nio(), 0, n_neighbours=32)
    assert g32.edge_index.shape == (2, 32) and g32.x.shape == (33, NODE_DIM)
    assert torch.equal(g32.dist[:20], g20.dist) and torch.equal(g32.z[:21], g20.z)
    assert g32.edge_mask.all()  # NiO has more than 32 atoms within 8 A
