"""Hostile inputs of issue 13: non-finite and overlapping structures at every entry point, unusable
elements and sites, corrupt checkpoints, dataset manifests, graph and results caches."""

from __future__ import annotations

import io
import logging
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from pymatgen.core import Lattice, Structure

from xanes_utils.__main__ import main
from xanes_utils.data import parse_mp_document
from xanes_utils.dataset import load_dataset, manifest_path, pack
from xanes_utils.elements import UnsupportedElementError
from xanes_utils.feff import write_inputs
from xanes_utils.graphs import build_graph
from xanes_utils.io import CorruptFileError, atomic_write_json, checksum_path, write_checksummed
from xanes_utils.model import ModelConfig, XanesGAT
from xanes_utils.prediction import predict
from xanes_utils.structures import MIN_DISTANCE, StructureError
from xanes_utils.train import DEFAULT_MODEL, load_checkpoint, load_model, save_checkpoint
from xanes_utils.workflow import cached_json

TINY = ModelConfig(conv_dims=(8, 8, 8), heads=3, head_dim=4, mlp_dims=(8, 8))
MODEL = XanesGAT(TINY).eval()
BAD = [float("nan"), float("inf"), float("-inf")]


def rocksalt(a: float = 4.17) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Ni", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@st.composite
def hostile_structures(draw) -> tuple[Structure, str]:
    """A Ni-O structure with a non-finite lattice or coordinate, or an O overlapping the Ni (closer
    than MIN_DISTANCE); returns it with the words its error must contain."""
    kind = draw(st.sampled_from(["lattice", "coordinate", "overlap"]))
    a = draw(st.floats(3.0, 12.0))
    ni, o = [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]
    if kind == "lattice":
        a = draw(st.sampled_from(BAD))
    elif kind == "coordinate":
        ni[draw(st.integers(0, 2))] = draw(st.sampled_from(BAD))
    else:
        direction = np.array(draw(st.lists(st.floats(0.1, 1.0), min_size=3, max_size=3)))
        distance = draw(st.floats(0.0, MIN_DISTANCE * 0.99))
        o = list(direction / np.linalg.norm(direction) * distance / a)
    structure = Structure(Lattice.cubic(a), ["Ni", "O"], [ni, o])
    return structure, "overlap" if kind == "overlap" else "NaN or infinite"


def entry_points(structure: Structure, tmp_path) -> dict:
    """Every way a structure enters the package, each as a zero-argument call."""
    doc = {"x": np.linspace(8330, 8400, 100).tolist(), "y": np.linspace(0, 1, 100).tolist(),
           "structure": structure.as_dict(), "absorbing_index": 0, "absorbing_element": "Ni", "edge": "K",
           "spectrum_type": "XANES", "material_id": "mp-1"}
    return {"predict": lambda: predict(structure, model=MODEL),
            "graph": lambda: build_graph(structure, 0, name="probe"),
            "loader": lambda: parse_mp_document(doc),
            "feff": lambda: write_inputs(structure, 0, tmp_path)}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=hostile_structures())
def test_non_finite_and_overlapping_structures_are_refused_everywhere(tmp_path, case):
    structure, words = case
    for name, call in entry_points(structure, tmp_path).items():
        with pytest.raises(StructureError, match=words):
            call()


def test_overlap_message_names_both_sites_and_the_distance():
    s = rocksalt()
    s.append("O", [0.3 / 4.17, 0, 0])
    with pytest.raises(StructureError, match=r"site 0 \(Ni\) is 0.300 A from site 8 \(O\)"):
        predict(s, model=MODEL)
    s = rocksalt()
    s.append("O", [0, 0, 0], validate_proximity=False)  # exactly on the Ni
    with pytest.raises(StructureError, match="0.000 A from site 8"):
        predict(s, model=MODEL)


POSCAR = """NiO
1.0
{a} 0.0 0.0
0.0 4.17 0.0
0.0 0.0 4.17
Ni {other}
1 1
direct
{first}
0.5 0.5 0.5
"""


@pytest.mark.parametrize("fields, words", [
    ({"first": "inf 0.0 0.0"}, "NaN or infinite"),
    ({"a": "nan"}, "NaN or infinite"),
    ({"a": "0.1"}, r"site 0 \(Ni\) is 0.100 A from its own periodic image; atoms closer than 0.5 A overlap"),
    ({"other": "Xx"}, "site 1 is 'Xx0\\+', not an element"),
    ({"other": "Db"}, "site 1 is 'Db', not an element with Z <= 104"),
])
def test_bad_structure_files_name_the_file_and_the_problem(tmp_path, fields, words):
    path = tmp_path / "POSCAR_bad"
    path.write_text(POSCAR.format(**({"a": "4.17", "other": "O", "first": "0.0 0.0 0.0"} | fields)))
    with pytest.raises(ValueError, match=words) as info:
        predict(path, model=MODEL)
    assert str(path) in str(info.value)
    assert main(["predict", str(path), "--out", str(tmp_path / "out")]) == 2


@pytest.mark.parametrize("structure, words", [
    (Structure(Lattice.cubic(1000.0), ["Ni"], [[0, 0, 0]]), "no neighbouring atom within 8.0 A"),
    (Structure(Lattice.cubic(900.0), ["Ni", "O"], [[0, 0, 0], [0.5] * 3]), "no neighbouring atom within 8.0 A"),
    (Structure(Lattice.cubic(1e8), ["Ni", "O"], [[0, 0, 0], [0.5] * 3]), "longer than 1000 A: not a crystal"),
    (Structure(Lattice.cubic(0.1), ["Ni"], [[0, 0, 0]]), "cell volume 0.001 A.3 for 1 atoms is too small"),
])
def test_lone_atom_and_tiny_cell_files(tmp_path, structure, words):
    path = tmp_path / "POSCAR_lone"
    structure.to(filename=str(path), fmt="poscar")
    with pytest.raises(ValueError, match=f"{path}: .*{words}"):
        predict(path, model=MODEL)


def test_nan_cell_length_in_a_cif(tmp_path):
    cif = tmp_path / "nan.cif"
    rocksalt().to(filename=str(cif))
    text = cif.read_text()
    cif.write_text(text.replace(text.split("_cell_length_a")[1].split("\n")[0], "   nan"))
    with pytest.raises(StructureError, match="nan.cif: the lattice or the atomic coordinates contain NaN"):
        predict(cif, model=MODEL)


def test_requested_site_that_is_not_an_absorber(tmp_path):
    path = tmp_path / "NiO.cif"
    rocksalt().to(filename=str(path))
    with pytest.raises(UnsupportedElementError, match=r"NiO.cif: site 4 \(O\d*\): unsupported absorbing element 'O'"):
        predict(path, sites=[4], model=MODEL)


# ----------------------------------------------------------------------------- checkpoints

def rewrite(path, edit) -> None:
    """Edit a checkpoint's payload and save it with a valid checksum (a consistent but wrong file)."""
    payload = torch.load(path, weights_only=True)
    edit(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_checksummed(path, buffer.getvalue())


@pytest.mark.parametrize("edit, words", [
    (lambda p: p["model_config"].update(conv_dims=[16, 16, 16]), "weights do not match the checkpoint's model_config"),
    (lambda p: p.pop("model_config"), "no 'model_config' dict"),
    (lambda p: p["model_config"].update(colour="blue"),
     r"invalid model_config \(unknown ModelConfig keys: \['colour'\]"),
    (lambda p: next(iter(p["state_dict"].values())).view(-1).__setitem__(0, float("nan")), "is not a finite tensor"),
])
def test_inconsistent_checkpoints_are_refused_naming_the_file(tmp_path, edit, words):
    path = tmp_path / "model.pt"
    save_checkpoint(path, XanesGAT(TINY))
    rewrite(path, edit)
    with pytest.raises(ValueError, match=words) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_flipped_bit_in_the_shipped_checkpoint_is_detected(tmp_path, caplog):
    assert checksum_path(DEFAULT_MODEL).exists()
    load_checkpoint(DEFAULT_MODEL)
    path = tmp_path / "family_bucket.pt"
    data = bytearray(DEFAULT_MODEL.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    shutil.copy(checksum_path(DEFAULT_MODEL), checksum_path(path))
    with pytest.raises(CorruptFileError, match="family_bucket.pt: SHA-256 does not match family_bucket.pt.sha256"):
        load_model(path)
    checksum_path(path).unlink()  # a checkpoint from before checksums: loads, with a warning
    path.write_bytes(DEFAULT_MODEL.read_bytes())
    with caplog.at_level(logging.WARNING, logger="xanes_utils.io"):
        load_model(path)
    assert "no checksum file family_bucket.pt.sha256" in caplog.text


def test_nan_predictions_are_refused_and_the_cli_fails(tmp_path):
    broken = XanesGAT(TINY).eval()
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    cif = tmp_path / "NiO.cif"
    rocksalt().to(filename=str(cif))
    with pytest.raises(ValueError, match="NiO.cif: the model predicted NaN or infinite values for site 0"):
        predict(cif, model=broken)
    ckpt = tmp_path / "nan.pt"
    save_checkpoint(ckpt, broken)
    out = tmp_path / "out"
    assert main(["predict", str(cif), "--out", str(out), "--model", str(ckpt)]) == 2
    assert not out.exists() or not any(out.iterdir())


def test_empty_manifest_names_the_manifest(tmp_path):
    runs = tmp_path / "runs"
    (runs / "Ni").mkdir(parents=True)
    out = tmp_path / "d.json.gz"
    pack(runs, out, plan=tmp_path / "none.json.gz")
    atomic_write_json(manifest_path(out), {})
    with pytest.raises(CorruptFileError, match="d.manifest.json: manifest without a 'sha256' entry"):
        load_dataset(out)


# ----------------------------------------------------------------------------- results caches

def test_edited_results_cache_is_recomputed_and_legacy_one_used(tmp_path, caplog):
    path = tmp_path / "02_mixed_vs_single.json"
    assert cached_json(path, lambda: {"mse": 0.0123}, key="k") == {"mse": 0.0123}
    path.write_text(path.read_text().replace("0.0123", "0.0923"))  # one edited digit
    with caplog.at_level(logging.WARNING, logger="xanes_utils.workflow"):
        assert cached_json(path, lambda: {"mse": 0.0123}, key="k") == {"mse": 0.0123}
    assert "SHA-256 does not match 02_mixed_vs_single.json.sha256" in caplog.text and "recomputing" in caplog.text
    checksum_path(path).unlink()  # written before checksums: used, with a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xanes_utils.io"):
        assert cached_json(path, lambda: pytest.fail("recomputed"), key="k") == {"mse": 0.0123}
    assert "integrity is not verified" in caplog.text
