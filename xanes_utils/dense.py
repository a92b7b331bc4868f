"""Star graphs pre-collated into dense tensors, with identical neighbours merged into counted slots.

Every star graph has 1 + n nodes and n edges (n = ``ModelConfig.neighbours``), so a whole dataset fits
in fixed-size tensors and a batch is a row selection, not a PyG collate. What the fast model needs of a
neighbour is its element and its edge inputs (the 65 distance features, plus the 9 angular ones with
``angular``); neighbours of one absorber that agree on both (the 6 O of an octahedron) contribute
identical terms, so they share one *slot* with a count, and every sum over neighbours becomes a
count-weighted sum over slots: the same numbers up to float rounding, for less per-edge work (6.9 slots
instead of 20 neighbours on average over the first 640 embedded records).

Slots are packed to the front of each row (``slot_count`` is 0 after the last one) in an order fixed by
their contents; ``edge_slot`` gives the slot of each neighbour edge (for per-edge attention weights).
:class:`Slots` is the flat form of a batch's used slots that :mod:`xanes_utils.model` computes on.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from xanes_utils.graphs import MAX_Z

# Slots builds CSR matrices from row pointers it made itself (check_invariants=False): torch's notes are noise
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")  # torch >= 2.11

if TYPE_CHECKING:
    from xanes_utils.model import ModelConfig


@dataclass(frozen=True)
class DenseGraphs:
    """G star graphs with n neighbour slots each (see the module docstring).

    ``x`` [G, 118] absorber features; ``slot_inputs`` [G, k, edge_dim], ``slot_z`` [G, k] long and
    ``slot_count`` [G, k] float (0: unused) describe the slots (k <= n: :meth:`select` drops trailing
    columns no selected graph uses); ``edge_slot`` [G, n] long (0 on dummy edges) and ``edge_mask`` [G, n]
    bool describe the n neighbour edges; ``cell_counts`` [G, 119] long and ``y`` [G, 111], or None where the
    graphs have none; ``site_embedding`` [G, w] the absorbers' site embeddings, or None.
    ``angular`` tells whether ``slot_inputs`` holds the angular features after the distance ones.
    """

    x: Tensor
    slot_inputs: Tensor
    slot_z: Tensor
    slot_count: Tensor
    edge_slot: Tensor
    edge_mask: Tensor
    cell_counts: Tensor | None
    y: Tensor | None
    angular: bool
    site_embedding: Tensor | None = None

    @classmethod
    def from_batch(cls, batch: Batch, neighbours: int, angular: bool = False) -> DenseGraphs:
        """Pre-collate a PyG batch of :func:`xanes_utils.graphs.build_graph` graphs with ``neighbours``
        slots; raises a ValueError for graphs of another size or that are not star graphs."""
        n_graphs, n = batch.num_graphs, neighbours
        if batch.edge_mask.numel() != n_graphs * n:
            raise ValueError(f"the model expects graphs with {n} neighbour slots, got {batch.edge_mask.numel()} "
                             f"edges for {n_graphs} graphs: build them with n_neighbours={n}")
        src, dst = batch.edge_index
        if not torch.equal(dst.view(n_graphs, n), batch.ptr[:-1].unsqueeze(1).expand(-1, n)):
            raise ValueError("dense star graphs need edges that all end at the graph's node 0")
        inputs = batch.edge_attr
        if angular:
            if "edge_angular" not in batch:
                raise ValueError("angular=True needs graphs with edge_angular (build them with xanes_utils.graphs)")
            inputs = torch.cat([inputs, batch.edge_angular.to(inputs.dtype)], dim=-1)
        mask = batch.edge_mask.bool().view(n_graphs, n)
        z = batch.z[src].view(n_graphs, n)
        graph = torch.arange(n_graphs).unsqueeze(1).expand(-1, n)
        keys = torch.cat([graph[mask].unsqueeze(1).double(), z[mask].unsqueeze(1).double(),
                          inputs.view(n_graphs, n, -1)[mask].double()], dim=1)
        unique, inverse, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
        owner = unique[:, 0].long()  # rows sorted by graph first
        first = torch.cumsum(torch.bincount(owner, minlength=n_graphs), 0) - torch.bincount(owner, minlength=n_graphs)
        position = torch.arange(len(unique)) - first[owner]
        slot_inputs = inputs.new_zeros(n_graphs, n, inputs.shape[-1])
        slot_inputs[owner, position] = unique[:, 2:].to(inputs.dtype)
        slot_z = torch.zeros(n_graphs, n, dtype=torch.long)
        slot_z[owner, position] = unique[:, 1].long()
        slot_count = inputs.new_zeros(n_graphs, n)
        slot_count[owner, position] = counts.to(inputs.dtype)
        edge_slot = torch.zeros(n_graphs, n, dtype=torch.long)
        edge_slot[mask] = position[inverse]
        cell = batch.cell_counts.long() if "cell_counts" in batch else None
        y = batch.y if "y" in batch else None
        embedding = batch.site_embedding if "site_embedding" in batch else None
        return cls(batch.x[batch.ptr[:-1]], slot_inputs, slot_z, slot_count, edge_slot, mask, cell, y,
                   bool(angular), embedding).select(slice(None))

    @classmethod
    def from_graphs(cls, graphs: Sequence[Data], neighbours: int, angular: bool = False, chunk: int = 4096
                    ) -> DenseGraphs:
        """Pre-collate a list of star graphs (see :meth:`from_batch`), ``chunk`` graphs at a time (memory)."""
        if not graphs:
            raise ValueError("no graphs to collate")
        parts = [cls.from_batch(Batch.from_data_list(list(graphs[i:i + chunk])), neighbours, angular)
                 for i in range(0, len(graphs), chunk)]
        if len(parts) == 1:
            return parts[0]
        width = max(p.slot_count.shape[1] for p in parts)
        fields = {}
        for f in dataclasses.fields(cls):
            values = [getattr(p, f.name) for p in parts]
            if f.name == "angular" or values[0] is None:
                fields[f.name] = values[0]
            elif f.name.startswith("slot_"):  # pad the slot columns to the widest part
                fields[f.name] = torch.cat([torch.nn.functional.pad(v, (0, 0) * (v.dim() - 2)
                                                                    + (0, width - v.shape[1])) for v in values])
            else:
                fields[f.name] = torch.cat(values)
        return cls(**fields)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_graphs(self) -> int:
        """Number of graphs (as a PyG batch names it)."""
        return self.x.shape[0]

    def select(self, index: Tensor | slice) -> DenseGraphs:
        """The graphs at ``index`` (a slice or index tensor), slot columns trimmed to those in use."""
        rows = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "angular"}
        rows = {k: None if v is None else v[index] for k, v in rows.items()}
        used = int((rows["slot_count"] > 0).sum(1).max()) if len(rows["x"]) else 0
        for key in ("slot_inputs", "slot_z", "slot_count"):
            rows[key] = rows[key][:, :used]
        return DenseGraphs(**rows, angular=self.angular)

    def to(self, device: torch.device | str) -> DenseGraphs:
        """A copy on ``device``."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), Tensor)})

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[DenseGraphs]:
        """Batches in order, or shuffled in the order PyG's ``DataLoader(shuffle=True, generator=...)`` draws
        from the same generator; ``drop_last`` drops a last partial batch."""
        n = len(self)
        if shuffle:  # DataLoader draws a base seed for its workers, RandomSampler a permutation and, once it
            # is exhausted, the permutation of its empty remainder (num_samples % n)
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            order = torch.randperm(n, generator=generator)
            torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.select(order[start:start + batch_size])


def collate_for(config: ModelConfig, graphs: Sequence[Data] | DenseGraphs) -> Sequence[Data] | DenseGraphs:
    """``graphs`` as a model of ``config`` reads them fastest: pre-collated :class:`DenseGraphs` for the fast
    implementation, the list of PyG graphs for the reference (DenseGraphs are passed through)."""
    if isinstance(graphs, DenseGraphs) or config.implementation != "fast" or not len(graphs):
        return graphs
    return DenseGraphs.from_graphs(graphs, config.neighbours, config.angular)


class GraphLoader:
    """Re-iterable batches of :func:`collate_for`'s output with :class:`torch_geometric.loader.DataLoader`'s
    ``batch_size``, ``shuffle``, ``generator`` and ``drop_last`` (and its batch order for the same generator)."""

    def __init__(self, graphs: Sequence[Data] | DenseGraphs, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None, drop_last: bool = False) -> None:
        self.graphs, self.batch_size, self.shuffle = graphs, batch_size, shuffle
        self.generator, self.drop_last = generator, drop_last

    def __iter__(self) -> Iterator[DenseGraphs | Batch]:
        if isinstance(self.graphs, DenseGraphs):
            return self.graphs.batches(self.batch_size, self.shuffle, self.generator, self.drop_last)
        loader: Iterable = DataLoader(list(self.graphs), batch_size=self.batch_size, shuffle=self.shuffle,
                                      generator=self.generator, drop_last=self.drop_last)
        return iter(loader)


class Slots(NamedTuple):
    """The used slots of a batch, flattened: ``inputs`` [S, edge_dim], ``z`` [S], ``graph`` [S] (the
    batch row of each slot, ascending), ``count`` [S] float; ``n_graphs`` B and ``edge_index`` [B, n]
    (the flat slot of each neighbour edge; any slot on dummy edges). Slots of one graph and element form
    a *pair* (P of them): ``pair`` [S] is each slot's (ascending: a pair's slots are contiguous),
    ``pair_graph`` [P] and ``pair_z`` [P] describe them. ``graph_ptr`` [B + 1] and ``pair_ptr`` [P + 1]
    delimit the slots of each graph and pair (CSR row pointers); ``columns`` is ``arange(S)``."""

    inputs: Tensor
    z: Tensor
    graph: Tensor
    count: Tensor
    n_graphs: int
    edge_index: Tensor
    pair: Tensor
    pair_graph: Tensor
    pair_z: Tensor
    graph_ptr: Tensor
    pair_ptr: Tensor
    columns: Tensor

    @classmethod
    def of(cls, dense: DenseGraphs) -> Slots:
        """Flatten the used slots of ``dense``, ordered by graph and element."""
        used = dense.slot_count > 0
        per_graph = used.sum(1)
        first = torch.cumsum(per_graph, 0) - per_graph
        graph = torch.arange(len(dense), device=used.device).repeat_interleave(per_graph)
        z, inputs, count = dense.slot_z[used], dense.slot_inputs[used], dense.slot_count[used]
        edge_index = first.unsqueeze(1) + dense.edge_slot
        key = graph * (MAX_Z + 1) + z
        if bool((key[1:] < key[:-1]).any()):  # collated slots are sorted by element already
            order = torch.argsort(key, stable=True)
            key, z, inputs, count = key[order], z[order], inputs[order], count[order]
            edge_index = torch.argsort(order)[edge_index]
        pairs, pair, pair_size = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
        return cls(inputs, z, graph, count, len(dense), edge_index, pair, pairs // (MAX_Z + 1), pairs % (MAX_Z + 1),
                   _pointers(per_graph), _pointers(pair_size), torch.arange(len(z), device=used.device))

    def graph_sum(self, values: Tensor) -> Tensor:
        """Per-graph sums [B, ...] of per-slot ``values`` [S, ...] (not weighted by the counts)."""
        return values.new_zeros((self.n_graphs, *values.shape[1:])).index_add_(0, self.graph, values)

    def per_slot(self, values: Tensor) -> Tensor:
        """Per-graph ``values`` [B, ...] repeated for each slot of the graph: [S, ...]."""
        return values.index_select(0, self.graph)

    def pair_sum(self, values: Tensor) -> Tensor:
        """Per-pair sums [P, ...] of per-slot ``values`` [S, ...]."""
        return values.new_zeros((self.pair_z.shape[0], *values.shape[1:])).index_add_(0, self.pair, values)

    def pair_graph_sum(self, values: Tensor) -> Tensor:
        """Per-graph sums [B, ...] of per-pair ``values`` [P, ...]."""
        return values.new_zeros((self.n_graphs, *values.shape[1:])).index_add_(0, self.pair_graph, values)

    def graph_matrix(self, weight: Tensor) -> Tensor:
        """Sparse CSR [B, S] with ``weight`` [S] at (graph of the slot, slot): ``@ values`` [S, d] gives
        the per-graph weighted sums, in one pass over ``values``."""
        return torch.sparse_csr_tensor(self.graph_ptr, self.columns, weight, (self.n_graphs, len(self.columns)),
                                       check_invariants=False)

    def pair_matrix(self, weight: Tensor) -> Tensor:
        """Sparse CSR [P, S] with ``weight`` [S] at (pair of the slot, slot) (see :meth:`graph_matrix`)."""
        return torch.sparse_csr_tensor(self.pair_ptr, self.columns, weight, (len(self.pair_z), len(self.columns)),
                                       check_invariants=False)


def _pointers(sizes: Tensor) -> Tensor:
    """CSR row pointers [n + 1] of rows with ``sizes`` [n] entries."""
    return torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])
