"""Packing FEFF records into the dataset file, checksummed loading, corrupt-file detection."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from xanes_utils.dataset import load_dataset, pack
from xanes_utils.elements import energy_grid
from xanes_utils.feff import Job, _done_path
from xanes_utils.io import CorruptFileError, atomic_write_json, read_json


def _write_run(runs, structure_id, site, element, structure):
    job = Job(structure_id, site, element)
    grid = energy_grid(element)
    atomic_write_json(_done_path(runs, job), {
        "id": job.id, "structure_id": structure_id, "absorbing_index": site, "absorbing_element": element,
        "edge": "K", "spectrum_type": "XANES", "structure": structure.as_dict(), "x": grid.tolist(),
        "y": np.linspace(0, 1, 111).tolist(), "raw_energy": [], "raw_mu": [], "settings": {"scf_radius": 3.0},
        "retried": False, "seconds": 12.5})
    return job


@pytest.fixture
def packed(tmp_path):
    def rocksalt(metal, a):
        return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5] * 3])

    runs = tmp_path / "runs"
    _write_run(runs, "nio", 0, "Ni", rocksalt("Ni", 4.17))
    _write_run(runs, "feo", 0, "Fe", rocksalt("Fe", 4.3))
    plan = tmp_path / "plan.json.gz"
    atomic_write_json(plan, {"sources": {"nio": {"library": "test"}}})
    out = tmp_path / "ds.json.gz"
    manifest = pack(runs, out, plan)
    return out, manifest


def test_pack_and_load_roundtrip(packed):
    out, manifest = packed
    assert manifest["n_spectra"] == 2 and manifest["counts"]["Ni"] == 1 and manifest["counts"]["Fe"] == 1
    assert manifest["counts"]["Zn"] == 0
    # the runs predate the corehole setting: packed as the FSR core hole FEFF ran with, with the other defaults
    [group] = manifest["settings"]
    assert group["n"] == 2 and group["settings"]["corehole"] == "FSR" and group["settings"]["scf_radius"] == 3.0
    records = load_dataset(out)
    assert [r.id for r in records] == sorted(r.id for r in records)
    ni = next(r for r in records if r.element == "Ni")
    assert ni.site == 0 and ni.structure.composition.reduced_formula == "NiO"
    assert np.allclose(ni.energy, energy_grid("Ni")) and ni.mu.shape == (111,)
    assert ni.source == {"library": "test"}
    xas = ni.to_xas()
    assert str(xas.absorbing_element) == "Ni" and xas.edge == "K"


def test_corrupt_dataset_is_detected(packed):
    out, _ = packed
    data = bytearray(out.read_bytes())
    data[-5] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="SHA-256"):
        load_dataset(out)
    with pytest.raises(CorruptFileError, match="corrupt"):
        read_json(out)


def test_pack_takes_provenance_from_every_plan(tmp_path):
    runs = tmp_path / "runs"
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.17), ["Ni", "O"], [[0, 0, 0], [0.5] * 3]).as_dict()
    for sid in ("a", "b-relaxed"):
        atomic_write_json(runs / "Ni" / f"{sid}-0-Ni-XANES-K.json.gz", {
            "id": f"{sid}-0-Ni-XANES-K", "structure_id": sid, "absorbing_index": 0, "absorbing_element": "Ni",
            "structure": s, "x": list(range(111)), "y": [0.5] * 111, "seconds": 1.0, "settings": {}, "retried": False})
    plans = [tmp_path / "p1.json.gz", tmp_path / "p2.json.gz", tmp_path / "missing.json.gz"]
    atomic_write_json(plans[0], {"sources": {"a": {"library": "aflow"}}})
    atomic_write_json(plans[1], {"sources": {"b-relaxed": {"relaxed": True, "unrelaxed_id": "b"}}})
    pack(runs, tmp_path / "out.json.gz", plans)
    packed = read_json(tmp_path / "out.json.gz")
    assert packed["sources"] == {"a": {"library": "aflow"}, "b-relaxed": {"relaxed": True, "unrelaxed_id": "b"}}
