"""Deep ensemble: seeded members, shapes, calibrated non-negative spread, checkpoints, domain flag, predict/CLI."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from xanes_utils.__main__ import main
from xanes_utils.ensemble import (
    Ensemble, bootstrap, knn_distance, load_ensemble, predict_ensemble, save_ensemble, train_ensemble,
)
from xanes_utils.graphs import build_graph
from xanes_utils.io import checksum_path
from xanes_utils.model import ModelConfig
from xanes_utils.prediction import average_by_element, predict
from xanes_utils.train import TrainConfig, load_model, predict_graphs, save_checkpoint

TINY = ModelConfig(conv_dims=(16, 16, 16), heads=3, head_dim=8, mlp_dims=(16, 16))
OXIDES = [("Ni", 4.17), ("Co", 4.26), ("Fe", 4.33), ("Mn", 4.44), ("Ni", 4.30), ("Co", 4.10), ("Fe", 4.20),
          ("Mn", 4.35), ("Ni", 4.05), ("Co", 4.40), ("Fe", 4.45), ("Mn", 4.25)]


def rocksalt(metal: str, a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5] * 3])


def graphs():
    out = []
    for metal, a in OXIDES:
        g = build_graph(rocksalt(metal, a), 0)
        x = np.linspace(0, 1, 111)
        g.y = torch.tensor(1 / (1 + np.exp(-(x - (a - 4.0)) * 20)), dtype=torch.float32).unsqueeze(0)
        out.append(g)
    return out


def far_structure() -> Structure:
    """Metallic fcc Cu with a huge lattice parameter mismatch: nothing like a rock-salt oxide."""
    return Structure(Lattice.cubic(3.0), ["Zn"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def fit(seed: int = 0, n_members: int = 3) -> Ensemble:
    g = graphs()
    model, histories = train_ensemble(g[:8], g[8:], TINY, TrainConfig(epochs=15, batch_size=4, lr=3e-3, seed=seed),
                                      n_members=n_members, progress=False)
    assert len(histories) == n_members
    return model


@pytest.fixture(scope="module")
def ensemble() -> Ensemble:
    return fit()


def test_bootstrap_is_seeded_and_draws_with_replacement():
    a, b = bootstrap(100, 1), bootstrap(100, 1)
    assert np.array_equal(a, b) and len(a) == 100 and len(set(a.tolist())) < 100
    assert not np.array_equal(a, bootstrap(100, 2))


def test_weighted_bootstrap_follows_the_weights():
    weights = np.zeros(100)
    weights[:10] = 1.0
    weights[10] = 9.0  # index 10 carries half the mass
    draw = bootstrap(100, 1, weights)
    assert len(draw) == 100 and draw.max() <= 10 and 30 < np.count_nonzero(draw == 10) < 70
    assert np.array_equal(draw, bootstrap(100, 1, weights))
    for bad in (np.zeros(100), -weights, np.ones(99), np.full(100, np.nan)):
        with pytest.raises(ValueError, match="bootstrap weights"):
            bootstrap(100, 1, bad)


def test_knn_distance_by_hand():
    ref = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    assert knn_distance(torch.tensor([[0.0, 0.0]]), ref, k=2).item() == pytest.approx(2.5)  # (0 + 5) / 2


def test_shapes_spread_and_determinism(ensemble):
    g = graphs()
    result = predict_ensemble(ensemble, g)
    assert result.mu.shape == result.mu_std.shape == (12, 111) and result.members.shape == (3, 12, 111)
    assert (result.mu_std >= 0).all() and result.mu_std.max() > 0
    assert np.allclose(result.mu, result.members.mean(0), atol=1e-6)
    assert np.allclose(result.mu_std, ensemble.scale * result.members.std(0, ddof=1), atol=1e-6)
    assert np.allclose(predict_graphs(ensemble, g), result.mu, atol=1e-6)
    members = {tuple(m.state_dict()["out.weight"].flatten()[:5].tolist()) for m in ensemble.members}
    assert len(members) == 3  # seeds and resamples differ
    again = fit()
    for a, b in zip(ensemble.members, again.members):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    assert again.scale == ensemble.scale and again.domain.threshold == ensemble.domain.threshold


def test_calibration_and_domain_fitted_on_validation(ensemble):
    assert np.isfinite(ensemble.scale) and ensemble.scale > 0
    assert np.isfinite(ensemble.domain.threshold) and len(ensemble.domain.reference) == 3
    assert ensemble.domain.embeddings[0].shape == (8, TINY.mlp_dims[-1])


def test_far_structure_is_flagged_and_typical_training_sites_are_not(ensemble, caplog):
    caplog.set_level(logging.WARNING, logger="xanes_utils")
    (far,) = predict(far_structure(), model=ensemble)
    assert far.out_of_domain and far.domain_score > ensemble.domain.threshold
    assert "out of the training domain" in caplog.text and "site 0" in caplog.text
    inside = predict_ensemble(ensemble, graphs()[:8])
    assert np.median(inside.score) < ensemble.domain.threshold < far.domain_score


def test_checkpoint_round_trip_members_and_corruption(ensemble, tmp_path):
    path = tmp_path / "ens.pt"
    save_ensemble(path, ensemble, {"note": "test"})
    loaded, extra = load_ensemble(path)
    assert extra == {"note": "test"}
    g = graphs()
    a, b = predict_ensemble(ensemble, g), predict_ensemble(loaded, g)
    assert np.allclose(a.mu, b.mu, atol=1e-6) and np.allclose(a.mu_std, b.mu_std, atol=1e-6)
    assert np.allclose(a.score, b.score, atol=1e-5)
    assert isinstance(load_model(path), Ensemble)
    one = load_model(path, member=1)
    assert np.allclose(predict_graphs(one, g), a.members[1], atol=1e-6)
    with pytest.raises(IndexError, match="3 members"):
        load_model(path, member=3)
    single = tmp_path / "single.pt"
    save_checkpoint(single, ensemble.members[0])
    with pytest.raises(ValueError, match="single model"):
        load_model(single, member=2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="ens.pt"):
        load_model(path)
    checksum_path(path).unlink()
    path.write_bytes(bytes(data[: len(data) // 3]))  # truncated, no sidecar to tell
    with pytest.raises(ValueError, match="ens.pt"):
        load_ensemble(path)


def test_predict_and_cli_write_the_band(ensemble, tmp_path):
    path = tmp_path / "ens.pt"
    save_ensemble(path, ensemble)
    (p,) = predict(rocksalt("Ni", 4.17), model=ensemble)
    assert p.mu_std is not None and p.mu_std.shape == (111,) and (p.mu_std >= 0).all()
    mean, std, n = average_by_element([p])["Ni"]
    assert np.allclose(std, p.mu_std) and n == 4  # the conventional cell holds 4 equivalent Ni
    cif = tmp_path / "NiO.cif"
    rocksalt("Ni", 4.17).to(filename=str(cif))
    far = tmp_path / "far.cif"
    far_structure().to(filename=str(far))
    out = tmp_path / "out"
    assert main(["predict", str(cif), str(far), "--out", str(out), "--model", str(path)]) == 0
    table = np.loadtxt(out / "NiO_Ni0_site0_Ni_K.csv", delimiter=",", skiprows=1)
    assert table.shape == (111, 3) and np.allclose(table[:, 2], p.mu_std, atol=1e-4)
    assert (out / "NiO_Ni_K_average.csv").read_text().startswith("energy_eV,mu_normalised,mu_std")
    rows = (out / "far_sites.csv").read_text().splitlines()
    assert rows[0].split(",")[5:7] == ["domain_score", "out_of_domain"] and rows[1].split(",")[6] == "1"
    assert main(["predict", str(cif), "--out", str(tmp_path / "one"), "--model", str(path), "--member", "0"]) == 0
    assert np.loadtxt(tmp_path / "one" / "NiO_Ni0_site0_Ni_K.csv", delimiter=",", skiprows=1).shape == (111, 2)


def test_rpa_core_hole_maps_every_member_and_refuses_elements_without_a_transfer(ensemble, tmp_path, caplog):
    from xanes_utils.corehole import fit_transfer, save_transfers
    from xanes_utils.ensemble import mean_std

    rng = np.random.default_rng(0)
    fsr = rng.uniform(0, 1.5, (30, 111))
    rpa = 0.9 * fsr + 0.05  # a known map: damped, offset
    path = tmp_path / "transfer.json"
    transfer = fit_transfer("Ni", fsr, rpa)
    save_transfers(path, [transfer])
    nio = rocksalt("Ni", 4.17)
    (plain,) = predict(nio, model=ensemble)
    (mapped,) = predict(nio, model=ensemble, corehole="RPA", transfers=path)
    members = predict_ensemble(ensemble, [build_graph(nio, 0)]).members[:, 0]
    mu, raw = mean_std(np.stack([transfer.apply(m) for m in members]))
    assert mapped.corehole == "RPA" and plain.corehole == "FSR"
    assert np.allclose(mapped.mu, mu, atol=1e-5) and np.allclose(mapped.mu_std, ensemble.scale * raw, atol=1e-5)
    assert not np.allclose(mapped.mu, plain.mu, atol=1e-3)
    with pytest.raises(ValueError, match=r"no core-hole transfer for Co \(only for Ni\)"):
        predict(rocksalt("Co", 4.26), model=ensemble, corehole="RPA", transfers=path)
    cif = tmp_path / "CoO.cif"
    rocksalt("Co", 4.26).to(filename=str(cif))
    model_path = tmp_path / "ens.pt"
    save_ensemble(model_path, ensemble)
    with caplog.at_level(logging.ERROR, logger="xanes_utils"):
        code = main(["predict", str(cif), "--out", str(tmp_path / "out"), "--model", str(model_path),
                     "--corehole", "RPA", "--transfers", str(path)])
    assert code == 2 and "no core-hole transfer for Co" in caplog.text
