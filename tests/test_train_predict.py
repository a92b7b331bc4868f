"""Training (loss decreases, seeded, checkpoints load weights-only), splits, prediction and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from xanes_utils.elements import UnsupportedElementError, energy_grid
from xanes_utils.graphs import build_graph
from xanes_utils.model import ModelConfig, XanesGAT
from xanes_utils.prediction import predict
from xanes_utils.structures import StructureError
from xanes_utils.train import (
    TrainConfig, load_checkpoint, load_model, predict_graphs, save_checkpoint, split_indices, steps_per_epoch,
    train,
)

TINY = ModelConfig(conv_dims=(16, 16, 16), heads=3, head_dim=8, mlp_dims=(16, 16))


def rocksalt(metal, a):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5] * 3])


class Unsafe:
    """An arbitrary class: unpickling it would import and run code, so weights-only loading refuses it."""


def toy_graphs():
    """Rock-salt oxides whose target is a smooth step at a lattice-dependent position (learnable)."""
    graphs = []
    for metal, a in [("Ni", 4.17), ("Co", 4.26), ("Fe", 4.33), ("Mn", 4.44), ("Ni", 4.3), ("Co", 4.1)]:
        g = build_graph(rocksalt(metal, a), 0)
        x = np.linspace(0, 1, 111)
        g.y = torch.tensor(1 / (1 + np.exp(-(x - (a - 4.0)) * 20)), dtype=torch.float32).unsqueeze(0)
        graphs.append(g)
    return graphs


@pytest.mark.parametrize("n, batch_size", [(6, 4), (6, 3), (6, 8), (6, 6)])
def test_steps_per_epoch_counts_the_optimiser_steps_of_train(n, batch_size, monkeypatch):
    calls = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: calls.append(1) or step(self, *a, **k))
    graphs = toy_graphs()[:n]
    train(graphs, graphs[:2], TINY, TrainConfig(epochs=2, batch_size=batch_size), progress=False)
    assert len(calls) == 2 * steps_per_epoch(n, batch_size) == 2 * {4: 1, 3: 2, 8: 1, 6: 1}[batch_size]


def test_split_by_material_keeps_groups_together():
    groups = [f"m{i // 3}" for i in range(60)]  # 20 materials x 3 sites
    tr, va, te = split_indices(groups, seed=1)
    assert len(tr) + len(va) + len(te) == 60
    parts = [{groups[i] for i in p} for p in (tr, va, te)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert [a.tolist() for a in split_indices(groups, seed=1)] == [a.tolist() for a in (tr, va, te)]
    tr2, _, te2 = split_indices(groups, seed=1, by="spectrum")
    assert {groups[i] for i in tr2} & {groups[i] for i in te2}  # the paper's split leaks materials
    with pytest.raises(ValueError, match="material"):
        split_indices(groups, by="element")


def test_stratified_split_evaluates_every_element():
    # 3 elements x 4 materials x 2 sites: a plain 80/10/10 split of 12 materials can miss an element.
    groups = [f"{el}{m}" for el in "ABC" for m in range(4) for _ in range(2)]
    strata = [g[0] for g in groups]
    tr, va, te = split_indices(groups, seed=3, strata=strata)
    for part in (va, te):
        assert {strata[i] for i in part} == {"A", "B", "C"}
    assert not {groups[i] for i in tr} & ({groups[i] for i in va} | {groups[i] for i in te})
    assert len(tr) + len(va) + len(te) == len(groups)


def test_short_training_run_loss_decreases_and_is_seeded(tmp_path):
    graphs = toy_graphs()
    config = TrainConfig(epochs=40, batch_size=4, lr=3e-3, seed=0, device="cpu")
    model, history = train(graphs, graphs, TINY, config, progress=False)
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    assert history.val_loss[history.best_epoch] == min(history.val_loss)
    assert set(history.val_by_element) == {"Ni", "Co", "Fe", "Mn"}
    _, again = train(graphs, graphs, TINY, config, progress=False)
    assert again.train_loss == history.train_loss
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, config, metrics={"val": min(history.val_loss)}, history=history)
    payload = load_checkpoint(path)
    assert payload["metrics"]["val"] == min(history.val_loss) and payload["grid"]["n_points"] == 111
    loaded = load_model(path)
    assert np.allclose(predict_graphs(loaded, graphs), predict_graphs(model, graphs), atol=1e-6)


def test_checkpoint_that_needs_unpickling_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "xanes-family-bucket-checkpoint/1", "obj": Unsafe()}, path)
    with pytest.raises(ValueError, match="weights-only"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_predict_on_cif_every_distinct_site(tmp_path):
    cif = tmp_path / "NiO.cif"
    rocksalt("Ni", 4.17).to(filename=str(cif))
    model = XanesGAT(TINY).eval()
    preds = predict(cif, model=model)
    assert [(p.element, p.site) for p in preds] == [("Ni", 0)]
    assert np.allclose(preds[0].energy, energy_grid("Ni")) and preds[0].mu.shape == (111,)
    # spinel in pymatgen's origin choice 1 (A at 8a 0,0,0; B at 16d 5/8; O at 32e u = 0.3875)
    spinel = Structure.from_spacegroup("Fd-3m", Lattice.cubic(8.4), ["Fe", "Co", "O"],
                                       [[0, 0, 0], [0.625] * 3, [0.3875] * 3])
    assert sorted(p.element for p in predict(spinel, model=model)) == ["Co", "Fe"]


def test_prediction_errors(tmp_path):
    model = XanesGAT(TINY).eval()
    bad = tmp_path / "broken.cif"
    bad.write_text("data_x\n_cell_length_a 4.0\nloop_\n_atom_site_label\nNi1 0 0\n")
    with pytest.raises(StructureError, match="broken.cif"):
        predict(bad, model=model)
    salt = rocksalt("Na", 5.64)
    salt.replace_species({"O": "Cl"})
    with pytest.raises(StructureError, match="no supported transition-metal absorber"):
        predict(salt, model=model)
    disordered = rocksalt("Ni", 4.17)
    disordered.replace_species({"Ni": {"Ni": 0.5, "Co": 0.5}})
    with pytest.raises(StructureError, match="disordered"):
        predict(disordered, model=model)
    hf = rocksalt("Hf", 4.5)
    hf.replace_species({"O": "Ni"})
    with pytest.raises(UnsupportedElementError, match="Hf"):
        predict(hf, sites=[0], model=model)
    with pytest.raises(FileNotFoundError):
        predict(tmp_path / "nope.cif", model=model)
