"""The authors' whole-cell graph and a straightforward message-passing model of it: the speed baseline.

Written from the paper's description (``../shared/PAPER.md``), independent of :mod:`xanes_utils.model`:

* every atom of the unit cell is a node (features: the 118 orbital bits of its element);
* edges run from the absorber's 20 nearest atoms within 8 Å (periodic images map to their atom of the
  cell) to the absorber, with the 65 distance features; missing neighbours are simply absent;
* every node has a self-loop (distance features at r = 0), so every node is updated by every layer;
* convolutions ``BatchNorm(Linear(x_i + sum_j ELU(W_e e_ij) * x_j))``; attention heads compute
  ``f_ij = ELU(W_f [x_i, x_j, x_i - x_j, e_ij])``, ``q = W_q x_i``, ``k = W_k f_ij`` and
  ``tanh(w . (q * k) / sqrt(d))`` on every edge, a softmax over each node's incoming edges and
  ``BatchNorm(Linear(x_i + sum_j s_ij f_ij))``; BatchNorm statistics over every node of the batch;
* readout: the mean over every node of the cell, dropout, MLP with PReLU, linear to 111 points.

Same widths and parameter count as ``XanesGAT(ModelConfig.paper())``. Only its speed is used.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pymatgen.core import Structure
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import MessagePassing, global_mean_pool
from torch_geometric.utils import softmax

from xanes_utils.graphs import CUTOFF, EDGE_DIM, N_NEIGHBOURS, NODE_DIM, edge_features, orbital_table


def whole_cell_graph(structure: Structure, site: int, y: np.ndarray | None = None,
                     n_neighbours: int = N_NEIGHBOURS) -> Data:
    """Whole-cell graph of ``structure[site]``: ``x`` [atoms, 118], ``edge_index`` [2, k + atoms] (k <= 20
    neighbour edges into the absorber, then one self-loop per atom), ``edge_attr`` [k + atoms, 65],
    ``absorber`` the absorber's node index, ``y`` [1, 111] if given."""
    neighbours = sorted(structure.get_neighbors(structure[site], CUTOFF),
                        key=lambda nb: (round(float(nb.nn_distance), 6), int(nb.specie.Z), int(nb.index)))
    chosen = neighbours[:n_neighbours]
    atoms = len(structure)
    src = [int(nb.index) for nb in chosen] + list(range(atoms))
    dst = [site] * len(chosen) + list(range(atoms))
    dist = np.array([float(nb.nn_distance) for nb in chosen] + [0.0] * atoms)
    edge_attr = edge_features(dist).astype(np.float32)
    edge_attr[np.abs(edge_attr) < np.finfo(np.float32).tiny] = 0.0  # no subnormals, as in xanes_utils.graphs
    data = Data(x=torch.from_numpy(orbital_table()[[s.specie.Z for s in structure]]),
                edge_index=torch.tensor([src, dst], dtype=torch.long), edge_attr=torch.from_numpy(edge_attr),
                absorber=torch.tensor([site]))
    if y is not None:
        data.y = torch.as_tensor(np.asarray(y, np.float32)).view(1, -1)
    return data


class CellConv(MessagePassing):
    """``BatchNorm(Linear(x_i + sum_j ELU(W_e e_ij) * x_j))`` over every incoming edge."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(aggr="add")
        self.lin_edge = nn.Linear(EDGE_DIM, in_dim)
        self.lin = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """[N, d_in] -> [N, d_out]."""
        return self.bn(self.lin(x + self.propagate(edge_index, x=x, edge_attr=edge_attr)))

    def message(self, x_j: Tensor, edge_attr: Tensor) -> Tensor:
        """ELU(W_e e_ij) * x_j."""
        return F.elu(self.lin_edge(edge_attr)) * x_j


class CellAttentionHead(MessagePassing):
    """One head: attention on every edge, softmax over each node's incoming edges."""

    def __init__(self, in_dim: int, head_dim: int) -> None:
        super().__init__(aggr="add")
        self.head_dim = head_dim
        self.lin_f = nn.Linear(3 * in_dim + EDGE_DIM, in_dim)
        self.lin_q = nn.Linear(in_dim, head_dim)
        self.lin_k = nn.Linear(in_dim, head_dim)
        self.att = nn.Parameter(torch.ones(head_dim))
        self.lin = nn.Linear(in_dim, head_dim)
        self.bn = nn.BatchNorm1d(head_dim)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """[N, d_in] -> [N, d_head]."""
        return self.bn(self.lin(x + self.propagate(edge_index, x=x, edge_attr=edge_attr)))

    def message(self, x_i: Tensor, x_j: Tensor, edge_attr: Tensor, index: Tensor, ptr: Tensor | None,
                size_i: int | None) -> Tensor:
        """s_ij f_ij with s_ij the softmax over the target's edges of tanh(w . (q_i * k_ij) / sqrt(d))."""
        f = F.elu(self.lin_f(torch.cat([x_i, x_j, x_i - x_j, edge_attr], dim=-1)))
        score = torch.tanh((self.att * self.lin_q(x_i) * self.lin_k(f)).sum(-1) / math.sqrt(self.head_dim))
        return softmax(score, index, ptr, size_i).unsqueeze(-1) * f


class WholeCellGAT(nn.Module):
    """The paper's three sections on whole-cell graphs (dims default to the paper's)."""

    def __init__(self, conv_dims: tuple[int, ...] = (600, 500, 400), heads: int = 3, head_dim: int = 300,
                 mlp_dims: tuple[int, ...] = (200, 200), dropout: float = 0.05, out_dim: int = 111) -> None:
        super().__init__()
        dims = (NODE_DIM, *conv_dims)
        self.convs = nn.ModuleList(CellConv(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.heads = nn.ModuleList(CellAttentionHead(dims[-1], head_dim) for _ in range(heads))
        self.dropout = nn.Dropout(dropout)
        mlp_in = (heads * head_dim, *mlp_dims)
        self.mlp = nn.Sequential(*(nn.Sequential(nn.Linear(a, b), nn.PReLU()) for a, b in zip(mlp_in, mlp_in[1:])))
        self.out = nn.Linear(mlp_dims[-1], out_dim)

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, batch: Batch) -> Tensor:
        """Spectra [B, out_dim] of a batch of :func:`whole_cell_graph` graphs."""
        h = batch.x
        for conv in self.convs:
            h = conv(h, batch.edge_index, batch.edge_attr)
        h = torch.cat([head(h, batch.edge_index, batch.edge_attr) for head in self.heads], dim=-1)
        return self.out(self.mlp(self.dropout(global_mean_pool(h, batch.batch))))
