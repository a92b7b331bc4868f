"""Interpretability analyses on synthetic graphs and a stub model that implements the internals contract."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch_geometric.data import Batch, Data

from xanes_utils.analysis import (
    attention_table,
    attention_variance_decomposition,
    cluster_enrichment,
    cluster_neurons,
    embed_neurons,
    homology_matrix,
    homology_vs_distance,
    linear_cka,
    neuron_table,
    ranked_counts,
    record_responses,
    representation_similarity,
    sample_properties,
    uniform_attention_heads,
)
from xanes_utils.elements import ELEMENTS

Z_OF = {"Fe": 26, "Ni": 28, "Cu": 29, "Mo": 42, "Ru": 44}
SPECIES = (7, 8, 16)  # N, O, S
#: Planted neuron groups: absorbers each group fires for (Fe, Ni, Cu, and the period-5 pair Mo + Ru).
GROUPS = ((26,), (28,), (29,), (42, 44))
CONV1_PER_GROUP, MLP1_PER_GROUP = 10, 5
N_NOISE = len(GROUPS) * (CONV1_PER_GROUP + MLP1_PER_GROUP)


def make_graph(element: str, rng: np.random.Generator, n_real: int | None = None,
               species: np.ndarray | None = None) -> Data:
    """A star graph with the contract's fields; real neighbours sit in shuffled slots 0..n_real-1."""
    n_real = int(rng.integers(4, 21)) if n_real is None else n_real
    neighbours = rng.choice(SPECIES, n_real) if species is None else np.asarray(species)
    dists = np.sort(rng.uniform(1.8, 4.0, n_real))
    slots = rng.permutation(n_real)
    z = torch.zeros(21, dtype=torch.long)
    z[0] = Z_OF[element]
    z[1 + slots] = torch.as_tensor(neighbours, dtype=torch.long)
    dist = torch.zeros(20)
    dist[slots] = torch.as_tensor(dists, dtype=torch.float32)
    mask = torch.zeros(20, dtype=torch.bool)
    mask[:n_real] = True
    noise = torch.as_tensor(rng.standard_normal((1, N_NOISE)), dtype=torch.float32)
    return Data(z=z, dist=dist, edge_mask=mask, element=element, noise=noise, num_nodes=21)


def _block_gains(per_group: int, gen: torch.Generator) -> torch.Tensor:
    """[n_groups, n_groups * per_group]: group g's neurons respond with gain 1..2 to group g only."""
    gains = torch.zeros(len(GROUPS), len(GROUPS) * per_group)
    for g in range(len(GROUPS)):
        gains[g, g * per_group:(g + 1) * per_group] = 1 + torch.rand(per_group, generator=gen)
    return gains


class StubModel(torch.nn.Module):
    """Implements ``model(batch, return_internals=True)`` with planted neurons and species attention."""

    def __init__(self, heads: int = 2, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("gain_conv1", _block_gains(CONV1_PER_GROUP, gen))
        self.register_buffer("gain_mlp1", _block_gains(MLP1_PER_GROUP, gen))
        self.register_buffer("species_logit", torch.randn(heads, 119, generator=gen))
        self.readout = torch.nn.Linear(N_NOISE, 111)
        self.modes: list[bool] = []

    def forward(self, batch: Batch, return_internals: bool = False):
        """Spectra (and internals): planted element/period-selective neurons, a dead layer, attention."""
        self.modes.append(self.training)
        b = batch.num_graphs
        z = batch.z.view(b, 21)
        mask = batch.edge_mask.view(b, 20)
        selected = torch.stack([torch.isin(z[:, 0], torch.tensor(g)) for g in GROUPS], dim=1).float()
        n_conv1 = len(GROUPS) * CONV1_PER_GROUP
        conv1 = selected @ self.gain_conv1 + 0.1 * batch.noise[:, :n_conv1]
        mlp1 = selected @ self.gain_mlp1 + 0.1 * batch.noise[:, n_conv1:]
        logits = self.species_logit[:, z[:, 1:]].permute(1, 2, 0)
        logits = logits.masked_fill(~mask[..., None], float("-inf"))
        attention = torch.where(mask[..., None], torch.softmax(logits, dim=1), torch.zeros(()))
        out = self.readout(torch.cat([conv1, mlp1], dim=1))
        internals = {"conv1": conv1, "mlp1": mlp1, "dead": torch.zeros(b, 3),
                     "attention_weights": attention, "node_level": torch.zeros(b * 21, 4)}
        return (out, internals) if return_internals else out


@pytest.fixture(scope="module")
def graphs() -> list[Data]:
    rng = np.random.default_rng(0)
    return [make_graph(e, rng) for e in Z_OF for _ in range(12)]


@pytest.fixture(scope="module")
def recorded(graphs):
    torch.manual_seed(0)
    return record_responses(StubModel(), graphs, batch_size=7)


def _planted_labels() -> np.ndarray:
    """Planted group of each live neuron, in neuron_table order (conv1 then mlp1)."""
    return np.concatenate([np.repeat(np.arange(len(GROUPS)), CONV1_PER_GROUP),
                           np.repeat(np.arange(len(GROUPS)), MLP1_PER_GROUP)])


# ----------------------------------------------------------------------------- responses

def test_record_responses_shapes_and_manual_forward(graphs):
    torch.manual_seed(0)
    model = StubModel()
    model.train()
    responses, attention = record_responses(model, graphs, batch_size=7)
    assert list(responses) == ["conv1", "mlp1", "dead"]  # node-level tensor skipped
    assert responses["conv1"].shape == (60, 40) and responses["mlp1"].shape == (60, 20)
    assert attention.shape == (60, 20, 2)
    assert model.modes and not any(model.modes) and model.training  # ran in eval, mode restored
    model.eval()
    with torch.no_grad():
        _, internals = model(Batch.from_data_list(graphs), return_internals=True)
    for name in responses:
        np.testing.assert_allclose(responses[name], internals[name].numpy(), atol=1e-6)
    np.testing.assert_allclose(attention, internals["attention_weights"].numpy(), atol=1e-6)


def test_sample_properties_first_shell_rule():
    z = torch.zeros(21, dtype=torch.long)
    z[0], z[1:6] = 26, torch.tensor([7, 8, 8, 16, 8])
    dist = torch.zeros(20)
    dist[:5] = torch.tensor([2.3, 2.0, 2.1, 2.5, 3.0])  # 1.2 * 2.0 = 2.4: first shell = N, O, O
    mask = torch.zeros(20, dtype=torch.bool)
    mask[:5] = True
    tie = z.clone()
    tie[1:4] = torch.tensor([8, 7, 16])  # O at 2.3, N at 2.0, S at 2.1: one each -> nearest (N) wins
    props = sample_properties([Data(z=z, dist=dist, edge_mask=mask, element="Fe", num_nodes=21),
                               Data(z=tie, dist=dist, edge_mask=mask, element="Mo", num_nodes=21)])
    first, second = props.iloc[0], props.iloc[1]
    assert first["cn"] == 3 and first["coordination"] == "1-3" and first["neighbour"] == "O"
    assert first["first_shell_distance"] == pytest.approx((2.3 + 2.0 + 2.1) / 3, abs=1e-6)
    assert first["period"] == 4 and first["n_neighbours"] == 5
    assert second["neighbour"] == "N" and second["period"] == 5 and second["element"] == "Mo"


def test_neuron_table_drops_dead_and_standardises(recorded, caplog):
    responses, _ = recorded
    with caplog.at_level(logging.INFO, logger="xanes_utils.analysis"):
        table, descriptors = neuron_table(responses)
    assert "3 dead" in caplog.text
    assert table.attrs["n_dead"] == 3 and table.attrs["dead_per_layer"] == {"conv1": 0, "mlp1": 0, "dead": 3}
    assert descriptors.shape == (60, 60) and list(table["layer"].value_counts(sort=False)) == [40, 20, 0]
    np.testing.assert_allclose(descriptors.mean(axis=1), 0, atol=1e-9)
    np.testing.assert_allclose(descriptors.std(axis=1), 1, atol=1e-9)


def test_clustering_recovers_planted_groups(graphs, recorded):
    responses, _ = recorded
    table, descriptors = neuron_table(responses)
    result = cluster_neurons(descriptors, k_range=range(2, 9), seed=0)
    assert result.k == 4 and result.scores.idxmax() == 4
    assert adjusted_rand_score(_planted_labels(), result.labels) > 0.9
    again = cluster_neurons(descriptors, k_range=range(2, 9), seed=0)
    np.testing.assert_array_equal(result.labels, again.labels)

    props = sample_properties(graphs)
    enrichment = cluster_enrichment(descriptors, result.labels, props, layers=table["layer"])
    selectivity, drivers = enrichment
    planted = _planted_labels()
    for cluster in range(result.k):
        group = np.bincount(planted[result.labels == cluster]).argmax()
        elements = selectivity.loc[cluster, "element"]
        if group < 3:  # element-selective groups: Fe, Ni, Cu
            expected = ("Fe", "Ni", "Cu")[group]
            assert elements.idxmax() == expected
            assert drivers.at[cluster, "driver"] == "element" and drivers.at[cluster, "top_category"] == expected
        else:  # the period-5 group fires for Mo and Ru alike
            assert set(elements.nlargest(2).index) == {"Mo", "Ru"}
            assert drivers.at[cluster, "driver"] == "period" and drivers.at[cluster, "top_category"] == 5
        assert drivers.at[cluster, "eta2_element"] > 0.9
        assert drivers.at[cluster, "eta2_coordination"] < 0.3 and drivers.at[cluster, "eta2_neighbour"] < 0.3
        assert selectivity.loc[cluster, ("layer", "conv1")] == pytest.approx(2 / 3)


def test_embedding_is_deterministic(recorded):
    _, descriptors = neuron_table(recorded[0])
    first = embed_neurons(descriptors, seed=0)
    assert first.shape == (60, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, embed_neurons(descriptors, seed=0))
    assert embed_neurons(descriptors, method="pca").shape == (60, 2)


# ----------------------------------------------------------------------------- homology

def test_homology_leave_one_out_matches_planted_effect():
    calls = []

    def train_fn(subset):
        calls.append(tuple(subset))
        return frozenset(subset)

    def evaluate_fn(model):
        # B's samples cut A's error from 1.5 to 1.0; A's samples do nothing for B (error 2.0)
        return {"A": 1.0 if "B" in model else 1.5, "B": 2.0 if "B" in model else 4.0}

    h = homology_matrix(train_fn, evaluate_fn, ["A", "B"])
    assert calls == [("A", "B"), ("B",), ("A",)]
    assert h.at["A", "B"] == pytest.approx(0.5) and h.at["B", "A"] == pytest.approx(0.0)
    assert np.isnan(h.at["A", "A"]) and np.isnan(h.at["B", "B"])
    assert h.attrs["baseline"] == {"A": 1.0, "B": 2.0}

    h_add = homology_matrix(train_fn, evaluate_fn, ["A", "B"], protocol="add_one")
    assert h_add.at["A", "B"] == pytest.approx(1 / 3) and h_add.at["B", "A"] == pytest.approx(0.0)


def test_linear_cka_hand_case_and_invariances():
    # centred x = (-1, 0, 1), y = (-1, 1, 0): CKA = (x.y)^2 / (|x|^2 |y|^2) = 1 / 4
    assert linear_cka(np.array([1.0, 2, 3]), np.array([1.0, 3, 2])) == pytest.approx(0.25)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 5))
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.7 * x @ q + 2.0) == pytest.approx(1.0)
    y = rng.standard_normal((30, 4))
    assert linear_cka(x, y @ rng.standard_normal((4, 4))) < 0.9
    wide = rng.standard_normal((6, 10))  # gram form (n < p) must agree with the feature form
    wide_y = rng.standard_normal((6, 3))
    expected = np.linalg.norm((wide_y - wide_y.mean(0)).T @ (wide - wide.mean(0))) ** 2 / (
        np.linalg.norm((wide - wide.mean(0)).T @ (wide - wide.mean(0)))
        * np.linalg.norm((wide_y - wide_y.mean(0)).T @ (wide_y - wide_y.mean(0))))
    assert linear_cka(wide, wide_y) == pytest.approx(expected)


def test_representation_similarity_finds_shared_encoding():
    rng = np.random.default_rng(2)
    shared, other = rng.standard_normal((3, 12)), rng.standard_normal((3, 12))
    blocks, labels = [], []
    for element, basis, offset in (("Fe", shared, 0.0), ("Ni", shared, 5.0), ("Mo", other, -3.0)):
        blocks.append(offset + rng.standard_normal((40, 3)) @ basis + 0.05 * rng.standard_normal((40, 12)))
        labels += [element] * 40
    sim = representation_similarity(np.concatenate(blocks), labels)
    assert list(sim.index) == ["Fe", "Ni", "Mo"]
    np.testing.assert_allclose(np.diag(sim), 1.0)
    np.testing.assert_allclose(sim.to_numpy(), sim.to_numpy().T)
    assert sim.at["Fe", "Ni"] > 0.9 and sim.at["Fe", "Mo"] < sim.at["Fe", "Ni"] - 0.3
    centroid = representation_similarity(np.concatenate(blocks), labels, method="centroid")
    np.testing.assert_allclose(np.diag(centroid), 1.0)


def test_representation_similarity_wide_branch_agrees(monkeypatch):
    rng = np.random.default_rng(6)
    values = rng.standard_normal((45, 30))
    labels = ["Fe"] * 15 + ["Ni"] * 15 + ["Mo"] * 15
    gram = representation_similarity(values, labels)
    monkeypatch.setattr("xanes_utils.analysis.homology._GRAM_LIMIT", 0)
    np.testing.assert_allclose(representation_similarity(values, labels).to_numpy(), gram.to_numpy(), atol=1e-10)


def _planted_homology(noise: float, rng: np.random.Generator) -> pd.DataFrame:
    """H that decays with |dZ| within a period and vanishes across periods, plus noise."""
    z = np.array([ELEMENTS.index(e) for e in ELEMENTS])
    same = (z[:, None] // 10) == (z[None, :] // 10)
    h = np.where(same, np.exp(-np.abs(z[:, None] - z[None, :]) / 3), 0.0)
    h = h + noise * rng.standard_normal(h.shape)
    np.fill_diagonal(h, np.nan)
    return pd.DataFrame(h, index=list(ELEMENTS), columns=list(ELEMENTS))


def test_permutation_test_planted_and_random():
    planted = homology_vs_distance(_planted_homology(0.01, np.random.default_rng(3)), n_permutations=2000)
    assert planted["rho_same_period"] < -0.5 and planted["p_rho_same_period"] < 0.01
    assert planted["diff_same_minus_cross"] > 0 and planted["p_diff"] < 0.01
    assert planted["n_same_period_pairs"] == 180 and planted["n_cross_period_pairs"] == 200

    rng = np.random.default_rng(4)
    noise = pd.DataFrame(rng.standard_normal((20, 20)), index=list(ELEMENTS), columns=list(ELEMENTS))
    random = homology_vs_distance(noise, n_permutations=2000, seed=0)
    assert random["p_rho_same_period"] > 0.05 and random["p_diff"] > 0.05
    assert homology_vs_distance(noise, n_permutations=2000, seed=0) == random  # seeded


# ----------------------------------------------------------------------------- attention

def test_attention_table_sums_and_excludes_dummies(graphs, recorded):
    _, attention = recorded
    table = attention_table(attention, graphs)
    n_real = np.array([int(g.edge_mask.sum()) for g in graphs])
    assert len(table) == n_real.sum() * 2 and (table["neighbour_z"] > 0).all()
    sums = table.groupby(["sample", "head"])["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(table.groupby(["sample", "head"])["weight_norm"].mean(), 1.0, atol=1e-5)
    head0 = table[table["head"] == 0]
    assert (head0.groupby("sample")["rank"].apply(lambda r: sorted(r) == list(range(1, len(r) + 1)))).all()
    nearest = head0.loc[head0["rank"] == 1].set_index("sample")["distance"]
    np.testing.assert_allclose(nearest.to_numpy(), head0.groupby("sample")["distance"].min().to_numpy())
    props = sample_properties(graphs)
    np.testing.assert_array_equal(head0.groupby("sample")["shell"].apply(lambda s: (s == 1).sum()), props["cn"])
    assert set(table["element"].astype(str)) == set(Z_OF) and set(table["neighbour"].astype(str)) <= {"N", "O", "S"}


def test_attention_decomposition_recovers_species_factor():
    # fixed composition (10 N + 10 O per site): the softmax denominator is constant, so the
    # normalised weight depends on the neighbour species alone
    rng = np.random.default_rng(5)
    species = np.array([7] * 10 + [8] * 10)
    graphs = [make_graph(e, rng, n_real=20, species=rng.permutation(species)) for e in Z_OF for _ in range(8)]
    torch.manual_seed(0)
    _, attention = record_responses(StubModel(), graphs, batch_size=16)
    decomposition = attention_variance_decomposition(attention_table(attention, graphs), by_head=True)
    for _, block in decomposition.groupby("head"):
        terms = block.set_index("term")
        assert terms.at["neighbour", "r2"] > 0.99 and terms.at["neighbour", "delta_r2"] > 0.95
        assert terms.at["element", "r2"] < 0.01 and terms.at["distance_bin", "r2"] < 0.05
        assert terms.at["additive", "r2"] == pytest.approx(1.0, abs=1e-6)
    pooled = attention_variance_decomposition(attention_table(attention, graphs),
                                              factors=("element", "neighbour", "head"))
    assert pooled.set_index("term").at["interaction", "r2"] == pytest.approx(1.0, abs=1e-6)


def test_attention_decomposition_finds_element_through_its_pair_with_neighbour():
    """Absorber A favours N over O, absorber B the reverse: no main effect, all in element×neighbour."""
    rng = np.random.default_rng(0)
    element = np.repeat(["Fe", "Mo"], 400)
    neighbour = np.tile(["N", "O"], 400)
    favoured = (element == "Fe") == (neighbour == "N")
    table = pd.DataFrame({"head": 0, "element": element, "neighbour": neighbour,
                          "distance": rng.uniform(1.8, 3.0, 800),
                          "weight_norm": np.where(favoured, 1.5, 0.5) + rng.normal(0, 0.01, 800)})
    terms = attention_variance_decomposition(table, by_head=True).set_index("term")
    assert terms.at["element", "r2"] < 0.01 and terms.at["neighbour", "r2"] < 0.01
    assert terms.at["element×neighbour", "delta_r2"] > 0.95
    assert terms.at["element×neighbour", "r2_adj"] - terms.at["additive", "r2_adj"] > 0.95
    no_pair = attention_variance_decomposition(table.assign(weight_norm=rng.normal(1, 0.1, 800)), by_head=True)
    assert no_pair.set_index("term").at["element×neighbour", "delta_r2"] < 0.02


def test_ranked_counts_breaks_ties_by_value():
    values = pd.Series(["S", "Zn", "O", "Al", "Zn", "S", "O", "O", "Co"])
    assert ranked_counts(values).to_dict() == {"O": 3, "S": 2, "Zn": 2, "Al": 1, "Co": 1}
    assert list(ranked_counts(values, 3).index) == ["O", "S", "Zn"]
    assert list(ranked_counts(values[::-1].reset_index(drop=True), 3).index) == ["O", "S", "Zn"]


def test_uniform_attention_heads_are_named():
    table = pd.DataFrame({"head": [0, 0, 1, 1, 2, 2], "weight_norm": [1.0, 1.0, 0.5, 1.5, 1.0, 1.0 + 1e-9]})
    assert uniform_attention_heads(table) == [0, 2]
    assert uniform_attention_heads(table, atol=1e-12) == [0]
