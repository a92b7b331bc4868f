"""The whole-cell speed baseline of benchmarks/whole_cell.py: its graphs and its parameter count."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from xanes_utils.model import ModelConfig, XanesGAT

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from whole_cell import WholeCellGAT, whole_cell_graph  # noqa: E402


def nio() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.17), ["Ni", "O"], [[0, 0, 0], [0.5] * 3])


def test_every_cell_atom_is_a_node_with_a_self_loop_and_20_edges_into_the_absorber():
    structure = nio()  # conventional cell: 4 Ni + 4 O
    graph = whole_cell_graph(structure, 0, y=torch.zeros(111).numpy())
    assert graph.num_nodes == 8 and graph.edge_index.shape == (2, 20 + 8)
    src, dst = graph.edge_index
    assert (dst[:20] == 0).all() and torch.equal(src[20:], dst[20:])  # neighbour edges, then self-loops
    assert graph.edge_attr.shape == (28, 65) and not graph.edge_attr[20:, 0].any()  # self-loops at r = 0
    assert set(src[:6].tolist()) <= {4, 5, 6, 7}  # the 6 nearest are O atoms of the cell


def test_same_parameter_count_as_ours_and_a_training_step_runs():
    model = WholeCellGAT()
    assert model.n_parameters == XanesGAT(ModelConfig.paper()).n_parameters == 3_503_001
    batch = Batch.from_data_list([whole_cell_graph(nio(), i, y=torch.zeros(111).numpy()) for i in (0, 4)])
    out = model(batch)
    assert out.shape == (2, 111)
    torch.nn.functional.l1_loss(out, batch.y).backward()
    assert all(p.grad is not None for p in model.parameters())
