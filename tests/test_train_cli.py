"""`python -m xanes_utils train`: the shipped recipe on a user's spectra, scored on their test split, then used by
`predict --model`; bad arguments and too little data fail with a message and exit code 2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from xanes_utils import profiles
from xanes_utils.__main__ import main
from xanes_utils.dataset import DEFAULT_DATASET, FORMAT
from xanes_utils.ensemble import Ensemble
from xanes_utils.io import atomic_write_json, read_json
from xanes_utils.train import load_model


def user_data(path, per_element: int) -> str:
    """A packed dataset (no manifest) of the first ``per_element`` Ni and Fe records of the embedded file."""
    data = read_json(DEFAULT_DATASET)
    keep, seen = [], {"Ni": 0, "Fe": 0}
    for r in data["records"]:
        if seen.get(r["absorbing_element"], per_element) < per_element:
            keep.append(r)
            seen[r["absorbing_element"]] += 1
    used = {r["material_id"] for r in keep}
    atomic_write_json(path, {"format": FORMAT, "records": keep,
                             "structures": {k: v for k, v in data["structures"].items() if k in used},
                             "sources": {k: v for k, v in data["sources"].items() if k in used}})
    return str(path)


@pytest.fixture()
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "RESULTS_DIR", tmp_path / "results")  # caches out of the repository
    return tmp_path / "results"


def test_train_writes_a_scored_ensemble_that_predict_uses(tmp_path, results, caplog):
    data = user_data(tmp_path / "mine.json.gz", 30)
    model = tmp_path / "out" / "mine.pt"
    argv = ["train", data, "--out", str(model), "--profile", "quick", "--members", "2", "--epochs", "2",
            "--jobs", "1"]
    assert main(argv) == 0
    ensemble = load_model(model)
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2 and ensemble.config.site_embedding == 64
    table = pd.read_csv(model.with_suffix(".test.csv"), index_col="element")
    assert list(table.index) == ["Fe", "Ni", "all"] and table.loc["all", "n"] >= 2
    assert np.isfinite(table["eta"]).all() and table["coverage_2sigma"].between(0, 1).all()
    assert "test split" in caplog.text and str(model) in caplog.text
    assert (results / next(p.name for p in results.iterdir()) / "graphs.pt").exists()  # cached for a rerun

    cif = tmp_path / "NiO.cif"
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.17), ["Ni", "O"], [[0, 0, 0], [0.5] * 3]).to(filename=str(cif))
    assert main(["predict", str(cif), "--model", str(model), "--out", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "NiO_Ni_K_average.csv").exists()


@pytest.mark.parametrize("extra, message", [
    (["--members", "1"], "--members must be at least 2"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--jobs", "0"], "--jobs must be at least 1"),
])
def test_train_rejects_bad_arguments_before_training(tmp_path, results, caplog, extra, message):
    data = user_data(tmp_path / "mine.json.gz", 3)
    assert main(["train", data, "--out", str(tmp_path / "m.pt"), *extra]) == 2
    assert message in caplog.text and not (tmp_path / "m.pt").exists() and not results.exists()


def test_train_names_missing_data_a_directory_out_and_too_few_records(tmp_path, results, caplog):
    assert main(["train", str(tmp_path / "nothing.json.gz"), "--out", str(tmp_path / "m.pt")]) == 2
    assert "nothing.json.gz: no such file or directory" in caplog.text
    data = user_data(tmp_path / "mine.json.gz", 1)
    assert main(["train", data, "--out", str(tmp_path)]) == 2
    assert "must be a checkpoint file" in caplog.text
    assert main(["train", data, "--out", str(tmp_path / "m.pt"), "--profile", "quick"]) == 2  # 1 Ni + 1 Fe spectrum
    assert "mine.json.gz: 2 usable records give" in caplog.text and not (tmp_path / "m.pt").exists()
