"""Prediction API and command line: repeated calls, site labels and multiplicities, output names, errors."""

from __future__ import annotations

import gzip
import logging
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

import xanes_utils
from xanes_utils.__main__ import main
from xanes_utils.elements import energy_grid
from xanes_utils.model import ModelConfig, XanesGAT
from xanes_utils.profiles import ROOT
from xanes_utils.io import output_stem
from xanes_utils.prediction import average_by_element, predict
from xanes_utils.train import save_checkpoint

TINY = ModelConfig(conv_dims=(8, 8, 8), heads=3, head_dim=4, mlp_dims=(8, 8))


def rocksalt(metal: str = "Ni", a: float = 4.17) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5] * 3])


def spinel() -> Structure:
    """Fe3O4-like spinel: Fe on 8 tetrahedral and 16 octahedral sites (two distinct Fe sites)."""
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(8.4), ["Fe", "Fe", "O"],  # origin choice 1
                                     [[0, 0, 0], [0.625] * 3, [0.3875] * 3])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, XanesGAT(TINY))
    return path


def test_no_submodule_shadows_a_public_function():
    submodules = {m.name for m in pkgutil.iter_modules(xanes_utils.__path__)}
    assert "prediction" in submodules and not submodules & set(xanes_utils.__all__)


def test_public_entry_points_work_twice_in_one_process(tmp_path, ckpt):
    cif = tmp_path / "NiO.cif"
    rocksalt().to(filename=str(cif))
    for _ in range(2):
        model = xanes_utils.load_model(ckpt)
        preds = xanes_utils.predict(cif, model=model)
        assert [(p.element, p.site) for p in preds] == [("Ni", 0)]
        assert len(xanes_utils.load_dataset()) > 1000
        assert main(["predict", str(cif), "--out", str(tmp_path / "out"), "--model", str(ckpt)]) == 0
    assert callable(xanes_utils.predict) and callable(xanes_utils.load_model)


def test_labels_multiplicities_and_weighted_average():
    model = XanesGAT(TINY).eval()
    s = spinel()
    preds = predict(s, model=model)
    assert sorted(p.multiplicity for p in preds) == [8, 16]
    assert all(p.site in p.equivalent and p.label.startswith("Fe") for p in preds)
    assert sorted(i for p in preds for i in p.equivalent) == [i for i, x in enumerate(s) if x.specie.symbol == "Fe"]
    by_mult = {p.multiplicity: p.mu for p in preds}
    mean, _, n_sites = average_by_element(preds)["Fe"]
    assert n_sites == 24 and np.allclose(mean, (8 * by_mult[8] + 16 * by_mult[16]) / 24)
    # a chosen site that is not a representative still reports its whole equivalent set
    other = next(i for p in preds for i in p.equivalent if i != p.site)
    (chosen,) = predict(s, sites=[other], model=model)
    assert chosen.site == other and other in chosen.equivalent and chosen.multiplicity in (8, 16)
    twice = predict(s, sites=[chosen.equivalent[0], other], model=model)  # one set, asked for twice
    assert average_by_element(twice)["Fe"][2] == chosen.multiplicity


def test_cif_labels_are_kept(tmp_path):
    cif = tmp_path / "labelled.cif"
    CifWriter(spinel(), symprec=0.01).write_file(cif)
    text = cif.read_text()
    labels = {line.split()[1] for line in text.splitlines() if line.strip().startswith("Fe ")}
    preds = predict(cif, model=XanesGAT(TINY).eval())
    assert {p.label for p in preds} == labels and len(labels) == 2


@pytest.mark.parametrize("name, stem", [("Fe2O2.v1.cif", "Fe2O2.v1"), ("nio.cif.gz", "nio"), ("POSCAR", "POSCAR"),
                                        ("a b.cif", "a-b")])
def test_output_stem(name, stem):
    assert output_stem(f"/some/dir/{name}") == stem


def test_cli_names_are_unique_per_file_and_site(tmp_path, ckpt):
    fe = tmp_path / "Fe2O2.v1.cif"
    spinel().to(filename=str(fe))
    nio = tmp_path / "nio.cif.gz"
    nio.write_bytes(gzip.compress(rocksalt().to(fmt="cif").encode()))
    (tmp_path / "b").mkdir()
    nio2 = tmp_path / "b" / "nio.cif"
    rocksalt("Co", 4.26).to(filename=str(nio2))
    out = tmp_path / "out"
    assert main(["predict", str(fe), str(nio), str(nio2), "--out", str(out), "--model", str(ckpt)]) == 0
    site_csvs = sorted(p.name for p in out.glob("*_site*_K.csv"))
    assert len(site_csvs) == 4  # two Fe sites, one Ni, one Co: nothing overwritten
    assert sum(n.startswith("Fe2O2.v1_Fe") for n in site_csvs) == 2
    assert any(n.startswith("nio_Ni") for n in site_csvs) and any(n.startswith("nio-2_Co") for n in site_csvs)
    table = np.loadtxt(out / "nio_Ni0_site0_Ni_K.csv", delimiter=",", skiprows=1)
    assert table.shape == (111, 2) and np.allclose(table[:, 0], energy_grid("Ni"))
    assert (out / "nio_Ni0_site0_Ni_K.png").stat().st_size > 1000
    index = (out / "Fe2O2.v1_sites.csv").read_text().splitlines()
    assert index[0].startswith("site_index_0based,label,element,multiplicity,equivalent_indices_0based")
    assert sorted(int(r.split(",")[3]) for r in index[1:3]) == [8, 16] and "average" in index[3]
    assert np.loadtxt(out / "Fe2O2.v1_Fe_K_average.csv", delimiter=",", skiprows=1).shape == (111, 2)


def test_cli_errors_name_the_file_and_the_problem(tmp_path, ckpt, caplog, capsys):
    caplog.set_level(logging.ERROR, logger="xanes_utils")
    fes = tmp_path / "FeS.cif"
    s = rocksalt("Fe", 5.4)
    s.replace_species({"O": "S"})
    s.to(filename=str(fes))
    out = tmp_path / "out"

    def error(args: list[str]) -> str:
        caplog.clear()
        assert main(["predict", *args, "--out", str(out), "--model", str(ckpt)]) == 2
        return caplog.text

    assert "FeS.cif" in error([str(fes), "--sites", "4"]) and "site 4" in caplog.text and "S" in caplog.text
    assert "FeS.cif" in error([str(fes), "--sites", "27"]) and "0 to 7" in caplog.text
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(fes), "--sites"])
    assert exc.value.code == 2 and "--sites" in capsys.readouterr().err
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    caplog.clear()
    assert main(["predict", str(fes), "--model", str(notes)]) == 2
    assert "notes.txt" in caplog.text and "not a model checkpoint" in caplog.text
    taken = tmp_path / "taken.csv"
    taken.write_text("x")
    caplog.clear()
    assert main(["predict", str(fes), "--out", str(taken), "--model", str(ckpt)]) == 2
    assert "taken.csv" in caplog.text and "directory" in caplog.text
    salt = tmp_path / "NaCl.cif"
    s = rocksalt("Na", 5.64)
    s.replace_species({"O": "Cl"})
    s.to(filename=str(salt))
    assert "NaCl.cif" in error([str(salt)]) and "no supported transition-metal absorber" in caplog.text
    # one bad file among good ones: the good ones are still written, the exit code reports the failure
    assert "NaCl.cif" in error([str(salt), str(fes)]) and list(out.glob("FeS_*_K.csv"))


def test_cli_threads_option(tmp_path, ckpt, caplog):
    import torch

    nio = tmp_path / "nio.cif"
    rocksalt().to(filename=str(nio))
    before = torch.get_num_threads()
    try:
        caplog.set_level(logging.ERROR, logger="xanes_utils")
        assert main(["predict", str(nio), "--out", str(tmp_path / "o"), "--model", str(ckpt), "--threads", "0"]) == 2
        assert "--threads must be at least 1" in caplog.text and not (tmp_path / "o").exists()
        assert main(["predict", str(nio), "--out", str(tmp_path / "o"), "--model", str(ckpt), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1 and list((tmp_path / "o").glob("nio_Ni*_K.csv"))
    finally:
        torch.set_num_threads(before)


def test_cli_answers_help_and_missing_files_without_importing_torch(tmp_path):
    code = ("import sys; from xanes_utils.__main__ import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules and 'pymatgen' not in sys.modules; sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code, "predict", str(tmp_path / "missing.cif")],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "missing.cif: no such file" in run.stderr
    run = subprocess.run([sys.executable, "-c", code, "predict", "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert run.returncode == 0 and "FEFF's absolute energy scale" in run.stdout and "0-based" in run.stdout
