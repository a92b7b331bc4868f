"""CHGNet site embeddings of the absorber: features, cache, and the model option that reads them."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from xanes_utils.dense import DenseGraphs
from xanes_utils.graphs import build_graph
from xanes_utils.model import ModelConfig, XanesGAT
from xanes_utils.site_embeddings import (
    SHELL_EMBEDDING_DIM, SITE_EMBEDDING_DIM, atom_features, attach_site_embeddings, site_embeddings,
)

TINY = ModelConfig(conv_dims=(16, 12, 10), heads=2, head_dim=8, mlp_dims=(16, 8), site_embedding=SITE_EMBEDDING_DIM)


def rocksalt(metal: str, a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5] * 3])


def spinel() -> Structure:
    """Co3O4 spinel (origin choice 1), primitive: Co(T) at 1.93 A from 4 O, Co(O) at 1.92 A from 6 O."""
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(8.08), ["Co", "Co", "O"],
                                     [[0, 0, 0], [0.625] * 3, [0.388] * 3]).get_primitive_structure()


def test_features_see_the_environment_not_only_the_element():
    nio, nio_strained, cell = rocksalt("Ni", 4.17), rocksalt("Ni", 4.40), spinel()
    feats = atom_features([nio, nio_strained, cell], progress=False)
    assert [f.shape for f in feats] == [(len(s), SITE_EMBEDDING_DIM) for s in (nio, nio_strained, cell)]
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in feats)
    assert np.allclose(feats[0][0], feats[0][1], atol=1e-4)  # equivalent Ni sites of NiO agree
    assert np.abs(feats[0][0] - feats[1][0]).max() > 1e-2  # a strained cell changes the Ni embedding
    co = [i for i, s in enumerate(cell) if s.specie.symbol == "Co"]
    tetra, octa = co[0], co[-1]  # two tetrahedral then four octahedral Co in the primitive cell
    assert np.abs(feats[2][tetra] - feats[2][octa]).max() > 1e-2  # Co(T) and Co(O) are told apart


def test_site_embeddings_cache_round_trip_and_corruption(tmp_path, caplog):
    items = [SimpleNamespace(structure=s, site=i) for s, i in
             zip([rocksalt("Ni", 4.17), rocksalt("Co", 4.26), rocksalt("Ni", 4.17)], [0, 1, 1])]
    path = tmp_path / "emb.pt"
    first = site_embeddings(items, path, progress=False)
    assert first.shape == (3, SITE_EMBEDDING_DIM)
    assert torch.allclose(first[0], first[2], atol=1e-4)  # Ni site 0 and site 1 of the same NiO cell
    assert torch.equal(site_embeddings(items, path, progress=False), first)  # from the cache
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    with caplog.at_level(logging.WARNING):
        again = site_embeddings(items, path, progress=False)
    assert torch.equal(again, first) and "not used" in caplog.text
    other = site_embeddings(items[:2], path, progress=False)  # a stale key: recomputed
    assert torch.equal(other, first[:2])


def test_shell_embedding_appends_the_mean_of_the_first_shell(tmp_path):
    cell = spinel()
    co = [i for i, s in enumerate(cell) if s.specie.symbol == "Co"]
    items = [SimpleNamespace(structure=cell, site=i) for i in (co[0], co[-1])]  # Co(T), Co(O)
    feats = atom_features([cell], progress=False)[0]
    path = tmp_path / "emb.pt"
    absorber = site_embeddings(items, path, progress=False)
    both = site_embeddings(items, path, progress=False, width=SHELL_EMBEDDING_DIM)  # the 64-wide cache is stale
    assert both.shape == (2, SHELL_EMBEDDING_DIM)
    assert torch.allclose(both[:, :SITE_EMBEDDING_DIM], absorber)
    for row, item, size in zip(both, items, (4, 6)):
        shell = [nb.index for nb in cell.get_neighbors(cell[item.site], 2.3)]  # the 4 or 6 O at 1.92-1.93 Å
        assert len(shell) == size and all(cell[j].specie.symbol == "O" for j in shell)
        assert np.allclose(row[SITE_EMBEDDING_DIM:].numpy(), feats[shell].mean(axis=0), atol=1e-6)
    assert torch.equal(site_embeddings(items, path, progress=False, width=SHELL_EMBEDDING_DIM), both)
    with pytest.raises(ValueError, match="width"):
        site_embeddings(items, progress=False, width=32)


def test_attach_and_model_paths_agree():
    items = [SimpleNamespace(structure=rocksalt("Ni", 4.17), site=0, id="nio"),
             SimpleNamespace(structure=spinel(), site=0, id="co3o4")]
    graphs = [build_graph(it.structure, it.site) for it in items]
    attach_site_embeddings(graphs, items, progress=False)
    assert all(g.site_embedding.shape == (1, SITE_EMBEDDING_DIM) for g in graphs)
    torch.manual_seed(0)
    model = XanesGAT(TINY)
    assert model.mlp[0][0].in_features == 2 * 8 + SITE_EMBEDDING_DIM
    model.train()  # batch statistics: the site norm sees both graphs
    batch = Batch.from_data_list(graphs)
    dense = DenseGraphs.from_graphs(graphs, 20)
    assert torch.equal(dense.select(torch.tensor([1])).site_embedding, graphs[1].site_embedding)
    model.eval()
    fast, ref = model(dense), model(batch, implementation="reference")
    assert torch.allclose(fast, ref, atol=1e-5)
    swapped = [graphs[0].clone(), graphs[1]]
    swapped[0].site_embedding = graphs[1].site_embedding.clone()
    assert not torch.allclose(model(Batch.from_data_list(swapped))[0], fast[0])  # the embedding is read


def test_model_without_embeddings_says_how_to_get_them():
    graph = build_graph(rocksalt("Ni", 4.17), 0)
    model = XanesGAT(TINY).eval()
    with pytest.raises(ValueError, match="attach_site_embeddings"):
        model(Batch.from_data_list([graph]))
    with pytest.raises(ValueError, match="site_embedding"):
        ModelConfig(site_embedding=-1)
    plain = XanesGAT(ModelConfig(conv_dims=(16,), heads=1, head_dim=4, mlp_dims=(8,)))
    assert plain.site_norm is None and not any("site_norm" in k for k in plain.state_dict())


def test_predict_attaches_embeddings_for_a_model_that_reads_them():
    from xanes_utils.prediction import predict

    torch.manual_seed(1)
    model = XanesGAT(TINY).eval()
    out = predict(spinel(), model=model)
    assert len(out) == 2 and all(np.isfinite(p.mu).all() for p in out)  # the two distinct Co sites
    assert not np.allclose(out[0].mu, out[1].mu)


def test_missing_chgnet_is_named_even_for_cached_embeddings(monkeypatch):
    """The cache key holds CHGNet's version: without the package, the error says to install it."""
    import importlib.metadata

    from xanes_utils import site_embeddings

    real = importlib.metadata.version

    def version(name):
        if name == "chgnet":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(ImportError, match="site embeddings need CHGNet: pip install"):
        site_embeddings.potential_version()
