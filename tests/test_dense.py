"""Pre-collated dense star graphs: merged neighbour slots, batch order, and the model on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from xanes_utils.dense import DenseGraphs, GraphLoader, Slots, collate_for
from xanes_utils.graphs import build_graph
from xanes_utils.model import ModelConfig, XanesGAT

TINY = ModelConfig(conv_dims=(16, 12, 10), heads=2, head_dim=8, mlp_dims=(16, 8))


def rocksalt(metal: str, a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5] * 3])


def cluster() -> Structure:
    """NiO4 square in a 30 A box: 4 real neighbours, 16 dummies."""
    coords = [[15, 15, 15], [17, 15, 15], [13, 15, 15], [15, 17, 15], [15, 13, 15]]
    return Structure(Lattice.cubic(30.0), ["Ni", "O", "O", "O", "O"], coords, coords_are_cartesian=True)


def distorted() -> Structure:
    """A triclinic cell: only lattice translations of the absorber pair up (+L and -L)."""
    lattice = Lattice.from_parameters(5.1, 5.7, 6.3, 83, 97, 101)
    return Structure(lattice, ["Fe", "O", "S", "O"], [[0, 0, 0], [0.31, 0.12, 0.07], [0.55, 0.61, 0.27],
                                                      [0.13, 0.71, 0.58]])


def test_identical_neighbours_share_a_counted_slot():
    graphs = [build_graph(rocksalt("Ni", 4.17), 0), build_graph(cluster(), 0), build_graph(distorted(), 0)]
    dense = DenseGraphs.from_graphs(graphs, 20)
    # NiO: 6 O at a/2, 12 Ni at a/sqrt2, 2 O at a sqrt3/2 -> 3 slots; the square: 4 O at 2 A -> 1 slot
    assert sorted(dense.slot_count[0][dense.slot_count[0] > 0].tolist()) == [2.0, 6.0, 12.0]
    assert dense.slot_count[1].tolist()[:1] == [4.0] and not dense.slot_count[1, 1:].any()
    used = dense.slot_count[2] > 0
    assert used.sum() >= 16 and dense.slot_count[2].sum() == 20 and set(dense.slot_count[2][used].tolist()) == {1, 2}
    assert dense.slot_inputs.shape[1] == dense.slot_count.shape[1] == used.sum()  # columns: the most used
    for g, row in zip(graphs, range(3)):
        mask = g.edge_mask
        slot = dense.edge_slot[row][mask]
        assert torch.equal(dense.slot_inputs[row, slot], g.edge_attr[mask])  # each edge's inputs, exactly
        assert torch.equal(dense.slot_z[row, slot], g.z[1:][mask])
        assert torch.equal(dense.edge_mask[row], mask)
        assert torch.equal(torch.bincount(slot, minlength=dense.slot_count.shape[1]).float(), dense.slot_count[row])
    assert torch.equal(dense.x, torch.stack([g.x[0] for g in graphs]))
    first_two = dense.select(slice(0, 2))
    assert first_two.slot_count.shape == (2, 3)  # columns no selected graph uses are dropped
    slots = Slots.of(first_two)
    assert slots.graph.tolist() == [0, 0, 0, 1] and slots.count.sum() == 24


def test_neighbours_equal_up_to_noise_share_a_slot():
    """Distances are rounded to DISTANCE_STEP: a square whose O sit 2e-6 A apart in distance (as after a
    relaxation that broke the symmetry by noise) gives the ideal square's one slot; 0.01 A apart, two."""
    def square(noise: float) -> Structure:
        coords = [[15, 15, 15], [17 + noise, 15, 15], [13, 15, 15], [15, 17, 15], [15, 13 - noise, 15]]
        return Structure(Lattice.cubic(30.0), ["Ni", "O", "O", "O", "O"], coords, coords_are_cartesian=True)

    dense = DenseGraphs.from_graphs([build_graph(square(0.0), 0), build_graph(square(2e-6), 0),
                                     build_graph(square(0.01), 0)], 20)
    assert [int((row > 0).sum()) for row in dense.slot_count] == [1, 1, 2]
    assert torch.equal(dense.slot_inputs[0], dense.slot_inputs[1])


def test_angular_inputs_and_wrong_sizes():
    graph = build_graph(rocksalt("Co", 4.26), 0)
    dense = DenseGraphs.from_graphs([graph], 20, angular=True)
    assert dense.slot_inputs.shape[-1] == 65 + 9 and dense.angular
    with pytest.raises(ValueError, match="32 neighbour slots"):
        DenseGraphs.from_graphs([graph], 32)
    with pytest.raises(ValueError, match="angular"):
        XanesGAT(TINY)(dense)
    with pytest.raises(ValueError, match="reference"):
        XanesGAT(TINY)(DenseGraphs.from_graphs([graph], 20), implementation="reference")


@pytest.mark.parametrize("n, batch_size, drop_last", [(11, 4, True), (11, 4, False), (8, 8, True)])
def test_shuffled_batches_follow_the_pyg_dataloader_order(n, batch_size, drop_last):
    graphs = []
    for i in range(n):
        g = build_graph(rocksalt("Ni", 4.0 + 0.02 * i), 0)
        g.y = torch.full((1, 111), float(i))
        graphs.append(g)
    dense = DenseGraphs.from_graphs(graphs, 20)
    pyg = DataLoader(graphs, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                     generator=torch.Generator().manual_seed(3))
    ours = GraphLoader(dense, batch_size, shuffle=True, drop_last=drop_last, generator=torch.Generator().manual_seed(3))
    for _ in range(2):  # two epochs: the generator advances the same way
        expected = [b.y[:, 0].tolist() for b in pyg]
        assert [b.y[:, 0].tolist() for b in ours] == expected
    assert collate_for(ModelConfig(implementation="reference"), graphs) is graphs


def test_model_on_dense_graphs_equals_the_reference_on_pyg_batches():
    rng = np.random.default_rng(0)
    graphs = [build_graph(s, 0, y=rng.random(111)) for s in (rocksalt("Ni", 4.17), cluster(), distorted(),
                                                             rocksalt("Mn", 4.44))]
    torch.manual_seed(0)
    model = XanesGAT(TINY)
    dense = DenseGraphs.from_graphs(graphs, 20)
    for train in (True, False):
        model.train(train)
        torch.manual_seed(1)
        out_d, int_d = model(dense, return_internals=True)
        torch.manual_seed(1)
        out_r, int_r = model(Batch.from_data_list(graphs), return_internals=True, implementation="reference")
        assert torch.allclose(out_d, out_r, atol=1e-5, rtol=1e-4)
        assert torch.allclose(int_d["attention_weights"], int_r["attention_weights"], atol=1e-5)


def test_collating_in_chunks_gives_the_same_tensors():
    graphs = [build_graph(s, 0) for s in (rocksalt("Ni", 4.17), distorted(), cluster(), rocksalt("Co", 4.26))]
    whole = DenseGraphs.from_graphs(graphs, 20)
    for chunk in (1, 3):
        parts = DenseGraphs.from_graphs(graphs, 20, chunk=chunk)
        for name in ("x", "slot_inputs", "slot_z", "slot_count", "edge_slot", "edge_mask", "cell_counts"):
            assert torch.equal(getattr(parts, name), getattr(whole, name)), (chunk, name)
        assert parts.y is None and whole.y is None


def test_slots_in_any_column_order_give_the_same_model():
    """Slots.of sorts slots by (graph, element) when a DenseGraphs lists them otherwise: the flattened slots,
    their edges and the model's outputs and gradients do not depend on the column order."""
    rng = np.random.default_rng(0)
    graphs = [build_graph(s, 0, y=rng.random(111)) for s in (distorted(), rocksalt("Ni", 4.17), cluster())]
    dense = DenseGraphs.from_graphs(graphs, 20)
    k = dense.slot_count.shape[1]
    used = (dense.slot_count > 0).sum(1).tolist()  # shuffle each row's used slots, which stay at the front
    order = torch.stack([torch.cat([torch.randperm(n, generator=torch.Generator().manual_seed(row)),
                                    torch.arange(n, k)]) for row, n in enumerate(used)])
    inverse = torch.argsort(order, dim=1)
    shuffled = DenseGraphs(dense.x, dense.slot_inputs.gather(1, order.unsqueeze(-1).expand_as(dense.slot_inputs)),
                           dense.slot_z.gather(1, order), dense.slot_count.gather(1, order),
                           inverse.gather(1, dense.edge_slot), dense.edge_mask, dense.cell_counts, dense.y,
                           dense.angular)
    a, b = Slots.of(dense), Slots.of(shuffled)
    assert not torch.equal(shuffled.slot_z, dense.slot_z)
    mask = dense.edge_mask
    assert torch.equal(a.inputs[a.edge_index[mask]], b.inputs[b.edge_index[mask]])  # each edge keeps its slot
    assert torch.equal(a.z[a.edge_index[mask]], b.z[b.edge_index[mask]])
    assert torch.equal(b.pair, torch.sort(b.pair).values) and torch.equal(a.pair_z, b.pair_z)
    results = []
    for data in (dense, shuffled):
        torch.manual_seed(0)
        model = XanesGAT(TINY)
        torch.manual_seed(1)
        out, internals = model(data, return_internals=True)
        torch.nn.functional.l1_loss(out, data.y).backward()
        results.append((out, internals["attention_weights"], [p.grad for p in model.parameters()]))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)
    for g_a, g_b in zip(results[0][2], results[1][2]):
        assert torch.allclose(g_a, g_b, atol=1e-6, rtol=1e-4)
