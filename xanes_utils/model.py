"""The family-bucket network: graph convolutions, multi-head graph attention, readout MLP.

Shapes (B graphs, n = 20 neighbour slots by default, N = (n + 1) B nodes, E = n B edges of which E_r are real,
d_l layer widths):

Section 1, :class:`StarConv` x len(conv_dims) (118 -> 600 -> 500 -> 400 at the paper's dims)::

    m_ij = ELU(W_e e_ij) * x_j                  e_ij [E_r, 65] -> [E_r, d_in]; x_j [E_r, d_in]
    h_i  = Linear(x_i + sum_j m_ij)             [N, d_in] -> [N, d_out]
    h_i  = BatchNorm(h_i)

The messages keep the input width (no projection of x_j), so ``x_i + sum_j m_ij`` is defined and
the Linear is the only change of width, exactly as the paper writes it. Only the absorber has
incoming edges; every other node gets ``BatchNorm(Linear(x))``. No activation follows the
BatchNorm (the paper lists none); the ELU gates make the absorber path nonlinear.

Section 2, :class:`StarAttentionHead` x heads (400 -> 3 x 300)::

    f_ij = ELU(W_f [x_i, x_j, x_i - x_j, e_ij])  [E_r, 3 d_in + 65] -> [E_r, d_in]
    q_i  = W_q x_i, k_ij = W_k f_ij               [.., d_head]
    c_ij = w . (q_i * k_ij) / sqrt(d_head)        [E_r]
    a_ij = tanh(c_ij - mean_j c_ij)               ("centred", default) or tanh(c_ij) ("paper")
    s_ij = softmax of a_ij over the absorber's real neighbours
    h_i  = BatchNorm(Linear(x_i + sum_j s_ij f_ij))   [N, d_in] -> [N, d_head]

Why centred (``ModelConfig.attention``): a softmax ignores any offset shared by all of an absorber's
scores, but the tanh before it does not. With the paper's score, training on the embedded data drove
that shared offset to thousands (the absorber's features, the only node with incoming messages, sit far
from the BatchNorm statistics of the neighbour nodes), the scores saturated at one value and heads became
exactly uniform (all 3 in one model, 4 of 9 over 3 seeds on more data). Subtracting the mean over the
absorber's real neighbours removes that offset and keeps the tanh's bound: an absorber's weights stay
within a factor e^2 of each other. The key bias only adds to the offset, so it cancels in the centred score.

Heads are concatenated ([N, heads * d_head]). Non-absorber nodes receive nothing, so, as in the
convolutions, their update is ``BatchNorm(Linear(x))`` with each head's Linear and BatchNorm.

Section 3: mean pool over the readout nodes, dropout, MLP with PReLU, linear to ``out_dim``.

Readout nodes (``ModelConfig.readout``): ``"local"``: the absorber and its real neighbours;
``"cell"``: the absorber and every other atom of the unit cell (the authors' choice; each cell atom
is an isolated node whose features come from its element). The same node set gives the
BatchNorm batch statistics in training mode, so the statistics describe the nodes that are pooled.

Implementations (``ModelConfig.implementation``), sharing parameters and state_dict keys:

* ``"reference"``: per-node message passing (:class:`torch_geometric.nn.MessagePassing`).
* ``"fast"``: every non-absorber node depends only on its element, so each layer is computed once
  per element present in the batch (a table) plus once per absorber, with BatchNorm statistics
  weighted by element counts. The attention input ``W_f [x_i, x_j, x_i - x_j, e]`` is split
  into absorber, element and edge terms, and ``w . (q * W_k f)`` is computed as
  ``(W_k^T (w * q)) . f``, so no per-edge matrix product wider than the 65 edge features remains.
  Neighbours of one absorber with the same element and edge inputs give identical terms: they share a
  counted slot (:mod:`xanes_utils.dense`), and sums and the softmax over neighbours run over the slots
  weighted by their counts (6.9 slots instead of 20 neighbours on average on the embedded records).
  Non-absorber features are taken from the orbital table by ``z`` (as :mod:`xanes_utils.graphs`
  builds them), absorber features from ``x``. It reads :class:`xanes_utils.dense.DenseGraphs` (PyG
  batches are collated into them on each call; pre-collate with :func:`xanes_utils.dense.collate_for`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter, softmax

from xanes_utils.dense import DenseGraphs, Slots
from xanes_utils.graphs import ANGLE_DIM, EDGE_DIM, MAX_Z, N_NEIGHBOURS, NODE_DIM, orbital_table

log = logging.getLogger(__name__)

READOUTS = ("local", "cell")
ATTENTION_SCORES = ("centred", "paper")
IMPLEMENTATIONS = ("fast", "reference")
EVAL_CHUNK = 256  # graphs per chunk of the fast path in eval mode (no new memory pages per call; see _encode_fast)


@dataclass
class ModelConfig:
    """Architecture of :class:`XanesGAT` (defaults: the paper's dimensions and graphs).

    Options beyond the paper: ``angular`` adds the graphs' 9 angular edge features to the 65 distance
    features (see :mod:`xanes_utils.graphs`); ``neighbours`` is the number of neighbour slots the
    graphs must have (the paper's 20; build graphs with ``n_neighbours`` equal to it); ``site_embedding``
    (0: off) is the width of a pretrained potential's embedding of the absorber (graphs' ``site_embedding``;
    64: the absorber's, 128: with its first shell's, see :mod:`xanes_utils.site_embeddings`), batch-normalised
    and appended to the readout before the MLP.
    """

    conv_dims: tuple[int, ...] = (600, 500, 400)
    heads: int = 3
    head_dim: int = 300
    mlp_dims: tuple[int, ...] = (200, 200)
    dropout: float = 0.05
    out_dim: int = 111
    readout: str = "local"
    attention: str = "centred"
    implementation: str = "fast"
    angular: bool = False
    neighbours: int = N_NEIGHBOURS
    site_embedding: int = 0

    def __post_init__(self) -> None:
        self.conv_dims = tuple(int(d) for d in self.conv_dims)
        self.mlp_dims = tuple(int(d) for d in self.mlp_dims)
        if not self.conv_dims or not self.mlp_dims or min(self.conv_dims + self.mlp_dims) < 1:
            raise ValueError("conv_dims and mlp_dims need at least one positive width each")
        if self.heads < 1 or self.head_dim < 1 or self.out_dim < 1:
            raise ValueError("heads, head_dim and out_dim must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, not {self.readout!r}")
        if self.attention not in ATTENTION_SCORES:
            raise ValueError(f"attention must be one of {ATTENTION_SCORES}, not {self.attention!r}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, not {self.implementation!r}")
        self.angular = bool(self.angular)
        self.neighbours = int(self.neighbours)
        if self.neighbours < 1:
            raise ValueError(f"neighbours must be positive, not {self.neighbours}")
        self.site_embedding = int(self.site_embedding)
        if self.site_embedding < 0:
            raise ValueError(f"site_embedding must be 0 (off) or a width, not {self.site_embedding}")

    @property
    def edge_dim(self) -> int:
        """Width of the edge inputs: 65 distance features, plus 9 angular ones with ``angular``."""
        return EDGE_DIM + (ANGLE_DIM if self.angular else 0)

    @classmethod
    def paper(cls, **overrides: Any) -> ModelConfig:
        """The paper's dimensions (about 3.5 M parameters)."""
        return cls(**overrides)

    @classmethod
    def cpu(cls, **overrides: Any) -> ModelConfig:
        """A small model for a 2-core laptop (128/128/128, 3 heads x 64, MLP 128/128)."""
        params = dict(conv_dims=(128, 128, 128), heads=3, head_dim=64, mlp_dims=(128, 128))
        return cls(**(params | overrides))

    def to_dict(self) -> dict:
        """Plain-type dict (lists for tuples) for checkpoints."""
        out = dataclasses.asdict(self)
        out["conv_dims"], out["mlp_dims"] = list(self.conv_dims), list(self.mlp_dims)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ValueError. Checkpoints written before the
        ``attention`` option have the paper's score."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        return cls(**({"attention": "paper"} | data))


class _WeightedBatchNorm(torch.autograd.Function):
    """Batch statistics weighted by ``weight``, normalisation and affine map with a hand-written backward
    (a few passes over ``h`` instead of autograd's one per operation). Returns (output, mean, biased variance)."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor, n: float, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
        mean = (weight @ h) / n
        centred = h - mean
        var = (weight @ centred.square()) / n
        inv_std = torch.rsqrt(var + eps)
        normed = centred.mul_(inv_std)
        ctx.save_for_backward(normed, weight, gamma, inv_std)
        ctx.n = n
        ctx.mark_non_differentiable(mean, var)
        return torch.addcmul(beta, normed, gamma), mean, var

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _mean: Tensor, _var: Tensor) -> tuple[Tensor | None, ...]:
        normed, weight, gamma, inv_std = ctx.saved_tensors
        grad_beta = grad.sum(0)
        grad_gamma = (grad * normed).sum(0)
        share = weight / ctx.n  # d mean / d h_i
        # d h_i = gamma / std * (g_i - w_i/n sum_k g_k - w_i/n normed_i sum_k g_k normed_k)
        grad_h = torch.addr(grad, share, grad_beta, alpha=-1.0)
        grad_h.addcmul_(normed, torch.outer(share, grad_gamma), value=-1.0).mul_(gamma * inv_std)
        return grad_h, None, grad_gamma, grad_beta, None, None


def weighted_batch_norm(bn: nn.BatchNorm1d, h: Tensor, weight: Tensor) -> Tensor:
    """``bn`` applied to every row of ``h`` [n, d], statistics over rows weighted by ``weight`` [n].

    In training mode the mean and biased variance are weighted by ``weight`` (0/1 masks or element
    counts) and the running statistics are updated as :class:`torch.nn.BatchNorm1d` does (unbiased
    variance, momentum or cumulative average); in eval mode the running statistics are used. With
    ``weight`` all ones this equals ``bn(h)``. With batch statistics and an affine map it runs through
    :class:`_WeightedBatchNorm` (eager mode; :func:`torch.compile` gets the plain operations).
    """
    if bn.training or not bn.track_running_stats:
        n = float(weight.sum())
        if bn.training and n <= 1.0:
            raise ValueError(f"BatchNorm in training mode needs more than one node (got weight {n})")
        w = weight.to(h.dtype)
        if bn.affine and not torch.compiler.is_compiling():
            out, mean, var = _WeightedBatchNorm.apply(h, w, bn.weight, bn.bias, n, bn.eps)
        else:
            mean = (w @ h) / n
            centred = h - mean
            var = (w @ centred.square()) / n
            out = centred * torch.rsqrt(var + bn.eps)
            out = torch.addcmul(bn.bias, out, bn.weight) if bn.affine else out
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.mul_(1.0 - factor).add_(factor * mean)
                bn.running_var.mul_(1.0 - factor).add_(factor * var * n / (n - 1.0))
        return out
    out = (h - bn.running_mean) * torch.rsqrt(bn.running_var + bn.eps)
    return torch.addcmul(bn.bias, out, bn.weight) if bn.affine else out


def _elu_(z: Tensor) -> Tensor:
    """ELU in place on ``z``, as ``max(z, exp(min(z, 0)) - 1)``: equal to :func:`torch.nn.functional.elu`
    within an ulp of 1, and faster on the CPU, where ``expm1`` is not vectorised (used in training only)."""
    return torch.maximum(z, z.clamp_max(0.0).exp_().sub_(1.0), out=z)


def _elu_grad(grad: Tensor, out: Tensor) -> Tensor:
    """Gradient through ``out = ELU(z)`` from its output (ELU'(z) = 1 above 0, ``out + 1`` below), in place
    on ``grad``."""
    return torch.ops.aten.elu_backward.grad_input(grad, 1.0, 1, 1, True, out, grad_input=grad)


class _SlotGate(torch.autograd.Function):
    """``sum_j ELU(W e_j + b)`` over each pair's neighbours: count-weighted sums over the slots, [P, d].

    Hand-written backward: the gate's [S, d] values are written once (ELU in place) and reused for its
    derivative; the counts are folded into the [S, edge_dim] inputs of the weight gradient."""

    @staticmethod
    def forward(ctx: Any, inputs: Tensor, weight: Tensor, bias: Tensor, slots: Slots) -> Tensor:
        gate = _elu_(torch.addmm(bias, inputs, weight.t()))  # [S, d]
        ctx.save_for_backward(gate, inputs)
        ctx.slots = slots
        return slots.pair_matrix(slots.count) @ gate

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        gate, inputs = ctx.saved_tensors
        slots: Slots = ctx.slots
        grad_z = _elu_grad(grad.index_select(0, slots.pair), gate)  # per neighbour, without its count
        counted = torch.cat([inputs, torch.ones_like(slots.count).unsqueeze(1)], 1) * slots.count.unsqueeze(1)
        grad_wb = (counted.t() @ grad_z).t()  # [d, edge_dim + 1]: weight and bias gradients together (this
        return None, grad_wb[:, :-1], grad_wb[:, -1], None  # orientation runs ~2x faster than grad_z.t() @ ...)


class _SlotAttention(torch.autograd.Function):
    """One head's attention over the slots: from the absorber and element terms of the pairs [P, d], the
    edge inputs and the scoring vectors ``key_vec`` [B, d] and ``key_bias`` [B] (see
    :meth:`StarAttentionHead.forward_fast`) to the weighted sums [B, d] of ``f`` and one neighbour's softmax
    weight per slot [S].

    Hand-written backward: ``f`` [S, d] is written once and reused for ELU's derivative, and the slot
    gradient ``weight * count * g_i + dscore * key_vec_i`` is one sparse product."""

    @staticmethod
    def forward(ctx: Any, pair_term: Tensor, inputs: Tensor, edge_weight: Tensor, key_vec: Tensor,
                key_bias: Tensor, slots: Slots, root: float, centred: bool) -> tuple[Tensor, Tensor]:
        f = _elu_(pair_term.index_select(0, slots.pair).addmm_(inputs, edge_weight.t()))  # [S, d]
        product = slots.per_slot(key_vec).mul_(f)
        score = (product.sum(-1) + slots.per_slot(key_bias)) / root  # [S]
        count = slots.count
        n_neighbours = slots.graph_sum(count)
        if centred:  # minus the mean over the absorber's neighbours
            score = score - slots.per_slot(slots.graph_sum(score * count) / n_neighbours)
        bounded = torch.tanh(score)
        weight = torch.exp(bounded)  # tanh bounds the exponent: no max to subtract
        weight = weight / slots.per_slot(slots.graph_sum(weight * count))  # one neighbour's softmax weight
        counted = weight * count
        ctx.save_for_backward(f, key_vec, bounded, weight, counted, inputs, n_neighbours)
        ctx.slots, ctx.root, ctx.centred = slots, root, centred
        return slots.graph_matrix(counted) @ f, weight

    @staticmethod
    def backward(ctx: Any, grad_sum: Tensor | None, grad_weight: Tensor | None) -> tuple[Tensor | None, ...]:
        f, key_vec, bounded, weight, counted, inputs, n_neighbours = ctx.saved_tensors
        slots: Slots = ctx.slots
        count = slots.count
        if grad_sum is None:
            grad_sum = key_vec.new_zeros(key_vec.shape)
        # d loss / d weight: from the weighted sums (count * f . g_i) and from the returned weights
        d_weight = slots.per_slot(grad_sum).mul_(f).sum(-1) * count
        if grad_weight is not None:
            d_weight = d_weight + grad_weight
        # softmax over the counted neighbours (weight = e / sum count e), then e = exp(tanh(score))
        d_e = d_weight - count * slots.per_slot(slots.graph_sum(d_weight * weight))
        d_score = d_e * weight * (1.0 - bounded.square())
        if ctx.centred:
            d_score = d_score - count * slots.per_slot(slots.graph_sum(d_score) / n_neighbours)
        d_raw = d_score / ctx.root  # gradient of f . key_vec_i + key_bias_i
        grad_key_vec = slots.graph_matrix(d_raw) @ f
        grad_key_bias = slots.graph_sum(d_raw)
        n_graphs = slots.n_graphs
        both = torch.sparse_csr_tensor(torch.arange(0, 2 * len(count) + 1, 2, device=f.device),
                                       torch.stack([slots.graph, slots.graph + n_graphs], 1).view(-1),
                                       torch.stack([counted, d_raw], 1).view(-1), (len(count), 2 * n_graphs),
                                       check_invariants=False)
        grad_z = _elu_grad(both @ torch.cat([grad_sum, key_vec]), f)  # [S, d]
        grad_pair = slots.pair_matrix(torch.ones_like(count)) @ grad_z
        grad_edge_weight = (inputs.t() @ grad_z).t()  # faster than grad_z.t() @ inputs
        return grad_pair, None, grad_edge_weight, grad_key_vec, grad_key_bias, None, None, None


def _hand_written() -> bool:
    """Whether the slot computations run through their autograd.Functions: when gradients are recorded, in
    eager mode. Inference runs the plain operations (the same numbers, bit for bit, as before the Functions);
    :func:`torch.compile` fuses the plain operations itself."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


def slot_gate(inputs: Tensor, weight: Tensor, bias: Tensor, slots: Slots) -> Tensor:
    """``sum_j ELU(W e_j + b)`` over each pair's neighbours [P, d]: :class:`_SlotGate` or the same maths in
    plain tensor operations (see :func:`_hand_written`)."""
    if _hand_written():
        return _SlotGate.apply(inputs, weight, bias, slots)
    return slots.pair_sum(F.elu(F.linear(inputs, weight, bias), inplace=True) * slots.count.unsqueeze(1))


def slot_attention(pair_term: Tensor, inputs: Tensor, edge_weight: Tensor, key_vec: Tensor, key_bias: Tensor,
                   slots: Slots, root: float, centred: bool) -> tuple[Tensor, Tensor]:
    """:class:`_SlotAttention` or the same maths in plain tensor operations (see :func:`_hand_written`)."""
    if _hand_written():
        return _SlotAttention.apply(pair_term, inputs, edge_weight, key_vec, key_bias, slots, root, centred)
    f = F.elu(torch.addmm(pair_term.index_select(0, slots.pair), inputs, edge_weight.t()), inplace=True)  # [S, d]
    score = ((f * slots.per_slot(key_vec)).sum(-1) + slots.per_slot(key_bias)) / root  # [S]
    if centred:
        score = score - slots.per_slot(slots.graph_sum(score * slots.count) / slots.graph_sum(slots.count))
    weight = torch.exp(torch.tanh(score))
    weight = weight / slots.per_slot(slots.graph_sum(weight * slots.count))
    return slots.graph_sum((weight * slots.count).unsqueeze(1) * f), weight


class StarConv(MessagePassing):
    """Graph convolution: ``BatchNorm(Linear(x_i + sum_j ELU(W_e e_ij) * x_j))``."""

    def __init__(self, in_dim: int, out_dim: int, edge_dim: int = EDGE_DIM) -> None:
        super().__init__(aggr="add", flow="source_to_target")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.lin_edge = nn.Linear(edge_dim, in_dim)
        self.lin = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, weight: Tensor) -> Tensor:
        """Reference: x [N, d_in], real edges [2, E_r] / [E_r, 65], BN weights [N] -> [N, d_out]."""
        size = (x.shape[0], x.shape[0])
        return weighted_batch_norm(self.bn, self.propagate(edge_index, x=x, edge_attr=edge_attr, size=size), weight)

    def message(self, x_j: Tensor, edge_attr: Tensor) -> Tensor:
        """m_ij = ELU(W_e e_ij) * x_j: [E_r, d_in]."""
        return F.elu(self.lin_edge(edge_attr)) * x_j

    def update(self, aggr_out: Tensor, x: Tensor) -> Tensor:
        """h_i = Linear(x_i + sum_j m_ij): [N, d_out] (before BatchNorm)."""
        return self.lin(x + aggr_out)

    def forward_fast(self, absorber: Tensor, table: Tensor, slots: Slots, pair_row: Tensor, table_weight: Tensor
                     ) -> tuple[Tensor, Tensor]:
        """Fast path: absorbers [B, d_in] and element table [U, d_in] -> ([B, d_out], [U, d_out]).

        ``slots`` are the batch's neighbour slots (:class:`xanes_utils.dense.Slots`), ``pair_row`` [P] the
        table row of each (graph, element) pair's element; ``table_weight`` [U] counts each element among the
        readout nodes (BatchNorm statistics).
        """
        per_pair = slot_gate(slots.inputs, self.lin_edge.weight, self.lin_edge.bias, slots)  # [P, d_in]
        summed = slots.pair_graph_sum(per_pair * table.index_select(0, pair_row))  # times x_j, the element's row
        rows = self.lin(torch.cat([absorber + summed, table]))  # one product for absorbers and elements
        weight = torch.cat([table_weight.new_ones(absorber.shape[0]), table_weight])
        out = weighted_batch_norm(self.bn, rows, weight)
        return out[:absorber.shape[0]], out[absorber.shape[0]:]


class StarAttentionHead(MessagePassing):
    """One attention head: ``BatchNorm(Linear(x_i + sum_j softmax_j(a_ij) f_ij))``; ``score`` is one of
    :data:`ATTENTION_SCORES` (see the module docstring)."""

    def __init__(self, in_dim: int, head_dim: int, edge_dim: int = EDGE_DIM, score: str = "centred") -> None:
        super().__init__(aggr="add", flow="source_to_target")
        if score not in ATTENTION_SCORES:
            raise ValueError(f"score must be one of {ATTENTION_SCORES}, not {score!r}")
        self.in_dim, self.head_dim, self.edge_dim, self.score = in_dim, head_dim, edge_dim, score
        self.lin_f = nn.Linear(3 * in_dim + edge_dim, in_dim)
        self.lin_q = nn.Linear(in_dim, head_dim)
        self.lin_k = nn.Linear(in_dim, head_dim)
        self.att = nn.Parameter(torch.ones(head_dim))  # w: starts as scaled dot-product attention
        self.lin = nn.Linear(in_dim, head_dim)
        self.bn = nn.BatchNorm1d(head_dim)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """Reference: x [N, d_in] -> ([N, d_head], attention weights [E_r])."""
        size = (x.shape[0], x.shape[0])
        f, alpha = self.edge_updater(edge_index, x=x, edge_attr=edge_attr, size=size)
        h = self.propagate(edge_index, x=x, f=f, alpha=alpha, size=size)
        return weighted_batch_norm(self.bn, h, weight), alpha

    def edge_update(self, x_i: Tensor, x_j: Tensor, edge_attr: Tensor, index: Tensor, ptr: Tensor | None,
                    size_i: int | None) -> tuple[Tensor, Tensor]:
        """Edge features f_ij [E_r, d_in] and softmax weights s_ij [E_r] over each target's edges."""
        f = F.elu(self.lin_f(torch.cat([x_i, x_j, x_i - x_j, edge_attr], dim=-1)))
        score = (self.att * self.lin_q(x_i) * self.lin_k(f)).sum(-1) / math.sqrt(self.head_dim)
        if self.score == "centred":
            score = score - scatter(score, index, dim=0, dim_size=size_i, reduce="mean")[index]
        return f, softmax(torch.tanh(score), index, ptr, size_i)

    def message(self, f: Tensor, alpha: Tensor) -> Tensor:
        """s_ij f_ij: [E_r, d_in]."""
        return alpha.unsqueeze(-1) * f

    def update(self, aggr_out: Tensor, x: Tensor) -> Tensor:
        """Linear(x_i + sum_j s_ij f_ij): [N, d_head] (before BatchNorm)."""
        return self.lin(x + aggr_out)

    def forward_fast(self, absorber: Tensor, table: Tensor, slots: Slots, pair_row: Tensor, table_weight: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """Fast path (arguments as :meth:`StarConv.forward_fast`); also returns the weight of one neighbour
        of each slot [S] (the softmax over the absorber's neighbours)."""
        n_graphs, d = absorber.shape[0], self.in_dim
        w_i, w_j, w_diff, w_e = self.lin_f.weight.split([d, d, d, self.edge_dim], dim=1)
        pair_term = (F.linear(absorber, w_i + w_diff, self.lin_f.bias).index_select(0, slots.pair_graph)
                     + F.linear(table, w_j - w_diff).index_select(0, pair_row))  # absorber + element terms: [P, d_in]
        query = self.att * self.lin_q(absorber)  # w * q_i: [B, d_head]
        key_vec = query @ self.lin_k.weight  # W_k^T (w * q_i): [B, d_in]
        key_bias = query @ self.lin_k.bias  # (w * q_i) . b_k: [B]
        summed, weight = slot_attention(pair_term, slots.inputs, w_e, key_vec, key_bias, slots,
                                        math.sqrt(self.head_dim), self.score == "centred")
        rows = self.lin(torch.cat([absorber + summed, table]))  # one product for absorbers and elements
        rows_weight = torch.cat([table_weight.new_ones(n_graphs), table_weight])
        out = weighted_batch_norm(self.bn, rows, rows_weight)
        return out[:n_graphs], out[n_graphs:], weight


class XanesGAT(nn.Module):
    """Graph convolutions, multi-head attention and an MLP readout (see the module docstring)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        cfg = self.config
        dims = (NODE_DIM, *cfg.conv_dims)
        self.convs = nn.ModuleList(StarConv(a, b, cfg.edge_dim) for a, b in zip(dims[:-1], dims[1:]))
        self.heads = nn.ModuleList(StarAttentionHead(dims[-1], cfg.head_dim, cfg.edge_dim, score=cfg.attention)
                                   for _ in range(cfg.heads))
        self.dropout = nn.Dropout(cfg.dropout)
        self.site_norm = nn.BatchNorm1d(cfg.site_embedding) if cfg.site_embedding else None
        mlp_in = (cfg.heads * cfg.head_dim + cfg.site_embedding, *cfg.mlp_dims)
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.PReLU())
                                 for a, b in zip(mlp_in[:-1], mlp_in[1:]))
        self.out = nn.Linear(cfg.mlp_dims[-1], cfg.out_dim)
        # Node features by atomic number, for element tables and cell atoms (not saved: derived data).
        self.register_buffer("orbital_table", torch.from_numpy(np.array(orbital_table())), persistent=False)

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, batch: Data | Batch | DenseGraphs, return_internals: bool = False,
                implementation: str | None = None
                ) -> Tensor | tuple[Tensor, dict[str, Any]]:
        """Spectra [B, out_dim]; with ``return_internals`` also the internals dict.

        Internals: graph-level activations pooled over the readout nodes, ``"conv1"``.. [B, d_l],
        ``"attention"`` [B, heads * head_dim], ``"mlp1"``.. [B, d] (after PReLU);
        ``"attention_weights"`` [B, n, heads] (n = ``config.neighbours``; 0 on dummy edges, each head's row
        sums to 1 over the real neighbours); ``"absorber"``: a dict of the absorber node's activations per layer.
        ``implementation`` overrides ``config.implementation`` for this call; ``DenseGraphs`` need the fast one.
        """
        impl = implementation or self.config.implementation
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, not {impl!r}")
        if isinstance(batch, DenseGraphs):
            if impl != "fast":
                raise ValueError("the reference implementation needs PyG graphs, not DenseGraphs")
            pooled, absorber, attention = self._encode_fast(self._check_dense(batch), return_internals)
        else:
            if not isinstance(batch, Batch):
                batch = Batch.from_data_list([batch])
            if impl == "fast":
                dense = DenseGraphs.from_batch(batch, self.config.neighbours, self.config.angular)
                pooled, absorber, attention = self._encode_fast(dense, return_internals)
            else:
                pooled, absorber, attention = self._encode_reference(batch, self._edge_inputs(batch),
                                                                     return_internals)
        h = self.dropout(pooled["attention"])
        if self.site_norm is not None:
            h = torch.cat([h, self.site_norm(self._site_embedding(batch).to(h.dtype))], dim=-1)
        for i, layer in enumerate(self.mlp, start=1):
            h = layer(h)
            pooled[f"mlp{i}"] = h
        out = self.out(h)
        if not return_internals:
            return out
        return out, {**pooled, "attention_weights": attention, "absorber": absorber}

    # ------------------------------------------------------------------------- helpers

    def _cell_counts(self, batch: Batch) -> Tensor:
        """[B, 119] counts of the other atoms of each unit cell (needed by the cell readout)."""
        if "cell_counts" not in batch:
            raise ValueError("readout='cell' needs graphs with cell_counts (build them with xanes_utils.graphs)")
        return batch.cell_counts.long()

    def _site_embedding(self, batch: Batch | DenseGraphs) -> Tensor:
        """[B, site_embedding] embeddings of the absorbers (needed when ``config.site_embedding`` > 0)."""
        embedding = getattr(batch, "site_embedding", None)
        width = self.config.site_embedding
        if embedding is None or embedding.dim() != 2 or embedding.shape[1] != width:
            raise ValueError(f"the model reads {width}-wide absorber site embeddings: attach them to the graphs "
                             "with xanes_utils.site_embeddings.attach_site_embeddings")
        return embedding

    def _edge_inputs(self, batch: Batch) -> Tensor:
        """Edge inputs [E, edge_dim]: distance features, plus the angular ones with ``config.angular``;
        checks that the graphs have ``config.neighbours`` slots."""
        n = self.config.neighbours
        if batch.edge_mask.numel() != batch.num_graphs * n:
            raise ValueError(f"the model expects graphs with {n} neighbour slots, got {batch.edge_mask.numel()} "
                             f"edges for {batch.num_graphs} graphs: build them with n_neighbours={n}")
        if not self.config.angular:
            return batch.edge_attr
        if "edge_angular" not in batch:
            raise ValueError("angular=True needs graphs with edge_angular (build them with xanes_utils.graphs)")
        return torch.cat([batch.edge_attr, batch.edge_angular.to(batch.edge_attr.dtype)], dim=-1)

    def _edge_weights(self, alphas: list[Tensor], mask: Tensor, n_graphs: int) -> Tensor:
        """Per-head weights of the real edges -> [B, n, heads], 0 on dummy edges."""
        full = alphas[0].new_zeros(mask.numel(), len(alphas))
        full[mask] = torch.stack(alphas, dim=-1)
        return full.view(n_graphs, self.config.neighbours, len(alphas))

    # ------------------------------------------------------------------------- reference

    def _encode_reference(self, batch: Batch, edges: Tensor, internals: bool) -> tuple[dict, dict, Tensor]:
        """Per-node message passing over the star graphs (plus isolated cell-atom nodes)."""
        n_graphs = batch.num_graphs
        mask = batch.edge_mask.bool()
        edge_index, edge_attr = batch.edge_index[:, mask], edges[mask]
        x, node_graph = batch.x, batch.batch
        absorbers = batch.ptr[:-1]
        readout = x.new_zeros(x.shape[0])
        readout[absorbers] = 1.0
        if self.config.readout == "local":
            readout[edge_index[0]] = 1.0
        else:
            counts = self._cell_counts(batch)
            z_cell = torch.arange(MAX_Z + 1, device=x.device).repeat(n_graphs).repeat_interleave(counts.reshape(-1))
            graph_cell = torch.arange(n_graphs, device=x.device).repeat_interleave(counts.sum(1))
            x = torch.cat([x, self.orbital_table[z_cell]])
            node_graph = torch.cat([node_graph, graph_cell])
            readout = torch.cat([readout, readout.new_ones(z_cell.shape[0])])
        n_read = readout.new_zeros(n_graphs).index_add_(0, node_graph, readout).unsqueeze(1)

        def pool(h: Tensor) -> Tensor:
            return h.new_zeros(n_graphs, h.shape[1]).index_add_(0, node_graph, h * readout.unsqueeze(1)) / n_read

        pooled, absorber = {}, {}
        h = x
        for i, conv in enumerate(self.convs, start=1):
            h = conv(h, edge_index, edge_attr, readout)
            if internals:
                pooled[f"conv{i}"], absorber[f"conv{i}"] = pool(h), h[absorbers]
        outs, alphas = zip(*(head(h, edge_index, edge_attr, readout) for head in self.heads))
        h = torch.cat(outs, dim=-1)
        pooled["attention"], absorber["attention"] = pool(h), h[absorbers]
        return pooled, absorber, self._edge_weights(list(alphas), mask, n_graphs)

    # ------------------------------------------------------------------------- fast

    def _check_dense(self, dense: DenseGraphs) -> DenseGraphs:
        """``dense`` if it was collated for this model's ``neighbours`` and ``angular``, else a ValueError."""
        n = self.config.neighbours
        if dense.edge_mask.shape[1] != n:
            raise ValueError(f"the model expects graphs with {n} neighbour slots, got DenseGraphs with "
                             f"{dense.edge_mask.shape[1]}: collate them with neighbours={n}")
        if dense.angular != self.config.angular:
            raise ValueError(f"the model has angular={self.config.angular}; the DenseGraphs were collated with "
                             f"angular={dense.angular}")
        return dense

    def _encode_fast(self, dense: DenseGraphs, internals: bool) -> tuple[dict, dict, Tensor]:
        """Absorbers plus one row per element present, on the counted neighbour slots; the same numbers as
        the reference. With BatchNorm on running statistics every graph is computed independently, so large
        batches run in chunks of :data:`EVAL_CHUNK` graphs: their per-slot tensors stay small enough to be reused
        by the memory allocator instead of being mapped (and page-faulted) afresh on every call."""
        n_graphs = len(dense)
        norms = [layer.bn for layer in (*self.convs, *self.heads)]
        if n_graphs > EVAL_CHUNK and not any(bn.training or not bn.track_running_stats for bn in norms):
            parts = [self._encode_fast(dense.select(slice(i, i + EVAL_CHUNK)), internals)
                     for i in range(0, n_graphs, EVAL_CHUNK)]
            pooled, absorber = ({key: torch.cat([part[j][key] for part in parts]) for key in parts[0][j]}
                                for j in (0, 1))
            return pooled, absorber, torch.cat([part[2] for part in parts])
        slots = Slots.of(dense)
        present = slots.z
        if self.config.readout == "cell":
            if dense.cell_counts is None:
                raise ValueError("readout='cell' needs graphs with cell_counts (build them with xanes_utils.graphs)")
            present = torch.cat([present, torch.nonzero(dense.cell_counts.sum(0)).view(-1)])
        elements = torch.unique(present)
        lookup = torch.zeros(MAX_Z + 1, dtype=torch.long, device=present.device)
        lookup[elements] = torch.arange(elements.numel(), device=present.device)
        pair_row = lookup[slots.pair_z]
        dtype = dense.x.dtype
        if self.config.readout == "local":  # counts [B, U] of each element among the pooled nodes
            counts = dense.x.new_zeros(n_graphs, elements.numel()).index_put_(
                (slots.pair_graph, pair_row), slots.pair_sum(slots.count), accumulate=True)
        else:
            counts = dense.cell_counts[:, elements].to(dtype)
        table_weight = counts.sum(0)
        n_read = (1.0 + counts.sum(1)).unsqueeze(1)

        def pool(a: Tensor, t: Tensor) -> Tensor:
            return (a + counts @ t) / n_read

        a, t = dense.x, self.orbital_table[elements].to(dtype)
        pooled, absorber = {}, {}
        for i, conv in enumerate(self.convs, start=1):
            a, t = conv.forward_fast(a, t, slots, pair_row, table_weight)
            if internals:
                pooled[f"conv{i}"], absorber[f"conv{i}"] = pool(a, t), a
        outs = [head.forward_fast(a, t, slots, pair_row, table_weight) for head in self.heads]
        a = torch.cat([o[0] for o in outs], dim=-1)
        t = torch.cat([o[1] for o in outs], dim=-1)
        pooled["attention"], absorber["attention"] = pool(a, t), a
        weights = torch.stack([o[2] for o in outs], dim=-1)[slots.edge_index]  # [B, n, heads]
        return pooled, absorber, weights * dense.edge_mask.unsqueeze(-1).to(dtype)
