"""FEFF pipeline: a real FEFF10 run on a tiny cluster, grid/normalisation, runner resume and failures."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from xanes_utils import feff
from xanes_utils.elements import E_START, UnsupportedElementError, energy_grid
from xanes_utils.feff import (COREHOLES, RPA_SETTINGS, FeffRunError, FeffSettings, Job, balanced, compute_spectrum,
                              generate, pending, to_grid)
from xanes_utils.io import read_json
from xanes_utils.structures import StructureError

TINY = FeffSettings(scf_radius=2.2, fms_radius=2.5, cluster_margin=0.3, xanes_kmax=3.0)


def rocksalt(metal: str = "Ni", a: float = 4.17) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_real_feff_run_on_tiny_cluster():
    result = compute_spectrum(rocksalt(), 0, TINY)
    y = np.asarray(result["y"])
    assert np.allclose(result["x"], energy_grid("Ni"))
    assert y.shape == (111,)
    # FEFF's first energy lies above E_start, so the grid starts with zeros; then an edge, ending near 1.
    first = np.argmax(y > 0)
    assert first > 0 and np.all(y[:first] == 0)
    assert result["raw_energy"][0] > E_START["Ni"]
    assert 0.7 < y[-1] < 1.3
    assert y.max() > y[first]  # a rising edge, not a flat line
    assert result["settings"] == dataclasses.asdict(TINY)


def test_to_grid_interpolates_zero_fills_and_holds():
    grid = energy_grid("Fe")
    energy = np.linspace(grid[10], grid[-20], 200)
    mu = (energy - energy[0]) / (energy[-1] - energy[0])
    x, y = to_grid(energy, mu, "Fe")
    assert np.allclose(x, grid)
    assert np.all(y[:10] == 0)
    assert y[10] == pytest.approx(0.0)
    assert y[50] == pytest.approx((grid[50] - energy[0]) / (energy[-1] - energy[0]))
    assert np.all(y[-19:] == pytest.approx(1.0))


@pytest.mark.parametrize("energy, mu, message", [
    ([7120.0, 7110.0, 7200.0], [0, 1, 1], "increasing"),
    ([7120.0, 7130.0, 7200.0], [0, np.nan, 1], "NaN"),
    ([7120.0, 7125.0, 7130.0], [0, 1, 1], "midpoint"),
])
def test_to_grid_rejects_bad_spectra(energy, mu, message):
    with pytest.raises(ValueError, match=message):
        to_grid(np.array(energy), np.array(mu), "Fe")


def test_unsupported_element_and_no_absorber_errors(tmp_path):
    with pytest.raises(UnsupportedElementError, match="Hf"):
        energy_grid("Hf")
    salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    with pytest.raises(StructureError, match="no supported transition-metal absorber"):
        feff.write_inputs(salt, 0, tmp_path)
    hf = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.5), ["Hf", "Ni"], [[0, 0, 0], [0.5] * 3])
    with pytest.raises(UnsupportedElementError, match="Hf"):
        feff.write_inputs(hf, 0, tmp_path)


def test_disordered_structure_error(tmp_path):
    s = rocksalt()
    s.replace_species({"Ni": {"Ni": 0.5, "Co": 0.5}})
    with pytest.raises(StructureError, match="disordered"):
        compute_spectrum(s, 0, TINY)


def test_feff_failure_is_reported_with_reason(tmp_path):
    (tmp_path / "feff.inp").write_text("TITLE broken\nPOTENTIALS\n 0 28 Ni\nATOMS\nEND\n")
    with pytest.raises(FeffRunError, match=str(tmp_path)):
        feff.run_feff(tmp_path)


def _fake_compute(structure, site, settings, stage_timeout, workdir=None):
    if site == 4:
        raise FeffRunError("SCF pot stage: negative density")
    x, y = to_grid(np.linspace(8340, 8400, 61), np.linspace(0, 1, 61), "Ni")
    return {"x": x.tolist(), "y": y.tolist(), "raw_energy": [], "raw_mu": [], "settings": {},
            "retried": False, "seconds": 0.0}


def test_runner_on_dask_local_cluster_survives_failures_and_resumes(tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    monkeypatch.setattr(feff, "compute_spectrum", _fake_compute)
    structures = {"nio": rocksalt().as_dict()}
    jobs = [Job("nio", 0, "Ni"), Job("nio", 4, "Ni")]
    # A leftover temporary file from a killed writer must not count as a finished spectrum.
    (tmp_path / "Ni").mkdir()
    (tmp_path / "Ni" / f".{jobs[0].id}.json.gz.123.tmp").write_bytes(b"partial")
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        counts = generate(jobs, structures, tmp_path, scheduler=client)
    assert counts == {"done": 1, "failed": 1, "pending": 0, "skipped": 0}
    done = read_json(tmp_path / "Ni" / f"{jobs[0].id}.json.gz")
    assert done["absorbing_index"] == 0 and len(done["y"]) == 111
    failed = read_json(tmp_path / "failed" / f"{jobs[1].id}.json")
    assert "negative density" in failed["reason"]
    assert pending(jobs, tmp_path) == []
    assert generate(jobs, structures, tmp_path, workers=1) == {"done": 0, "failed": 0, "pending": 0, "skipped": 2}


def test_safer_settings_change_scf_only():
    safer = TINY.safer()
    assert safer.scf_mixing < TINY.scf_mixing and safer.fms_radius == TINY.fms_radius
    no_scf = FeffSettings(scf_radius=0).tags()
    assert "SCF" not in no_scf and "SCF" in no_scf["_del"]
    assert FeffSettings().tags()["SCF"].startswith("3.0 ")


def test_corehole_card_and_validation(tmp_path):
    salt = Structure(Lattice.cubic(4.2), ["Ni", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    for corehole in COREHOLES:
        text = feff.write_inputs(salt, 0, tmp_path / corehole, FeffSettings(corehole=corehole)).read_text()
        cards = [line.split() for line in text.splitlines() if line.startswith("COREHOLE")]
        assert cards == [["COREHOLE", corehole]]
    assert FeffSettings().corehole == "FSR" and RPA_SETTINGS.corehole == "RPA"
    with pytest.raises(ValueError, match="corehole"):
        FeffSettings(corehole="none")


def test_plan_is_round_robin_over_elements_and_libraries():
    from pymatgen.core import Lattice, Structure

    from xanes_utils.feff import plan_jobs
    from xanes_utils.structures import SourceStructure

    def cell(metal, a, library, i):
        s = Structure(Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        return SourceStructure(f"{library}-{metal}-{i}", s, {"library": library})

    library = [cell("Fe", 4.3 + 0.01 * i, "aflow", i) for i in range(6)] + [cell("Fe", 4.2, "pymatgen", 0)]
    library += [cell("Mo", 4.5 + 0.01 * i, "aflow", i) for i in range(3)]
    jobs = plan_jobs(library, seed=1)
    assert len(jobs) == len({j.id for j in jobs}) == 10
    assert [j.element for j in jobs[:6]] == ["Fe", "Mo"] * 3
    fe = [j.structure_id for j in jobs if j.element == "Fe"]
    assert fe[:2].count("pymatgen-Fe-0") == 1  # the lone example is not pushed behind six AFLOW cells


def test_pending_jobs_are_balanced_towards_elements_with_fewer_spectra(tmp_path):
    jobs = [Job(f"s{i}", 0, el) for i in range(3) for el in ("Fe", "Mo", "Cd")]  # plan: Fe Mo Cd Fe Mo Cd ...
    for i in range(2):  # two finished Fe spectra, one Mo
        (tmp_path / "Fe").mkdir(exist_ok=True)
        (tmp_path / "Fe" / f"done{i}.json.gz").write_bytes(b"x")
    (tmp_path / "Mo").mkdir()
    (tmp_path / "Mo" / "done0.json.gz").write_bytes(b"x")
    order = [j.element for j in balanced(jobs, tmp_path)]
    assert order == ["Cd", "Mo", "Cd", "Fe", "Mo", "Cd", "Fe", "Mo", "Fe"]
    assert set(balanced(jobs, tmp_path)) == set(jobs)


def test_deficit_order_counts_finished_spectra_but_not_finished_jobs():
    from xanes_utils.feff import by_deficit

    jobs = [Job(f"s{i}", 0, el) for i in range(3) for el in ("Fe", "Mo")]
    # Mo has 2 spectra already, Fe none: Fe catches up first, then ties keep the given order
    assert [j.element for j in by_deficit(jobs, Counter(Mo=2))] == ["Fe", "Fe", "Mo", "Fe", "Mo", "Mo"]
    # Fe's one spectrum is its first job: finished, it is not counted twice
    assert [j.element for j in by_deficit(jobs, Counter(Fe=1))] == ["Mo", "Fe", "Mo", "Fe", "Mo", "Fe"]
    done = {Job("s0", 0, "Fe")}
    order = by_deficit(jobs, Counter(Fe=1), done=done.__contains__)
    assert [j.element for j in order] == ["Mo", "Fe", "Fe", "Mo", "Fe", "Mo"]
    assert [j.structure_id for j in order if j.element == "Fe"] == ["s0", "s1", "s2"]  # as given


def test_prototype_families_take_turns_within_an_element():
    from xanes_utils.feff import spread_families

    sources = {"y1": {"prototype": "YBCO"}, "y2": {"prototype": "YBCO"}, "y3": {"example": "YBCO"},
               "s1": {"prototype": "spinel"}, "own": {}}
    jobs = [Job("y1", 0, "Cu"), Job("y2", 0, "Cu"), Job("y1", 0, "Y"), Job("y3", 0, "Cu"), Job("s1", 0, "Cu"),
            Job("own", 0, "Cu"), Job("y2", 0, "Y")]
    order = spread_families(jobs, sources)
    assert [(j.structure_id, j.element) for j in order] == [
        ("y1", "Cu"), ("y1", "Y"), ("s1", "Cu"), ("own", "Cu"), ("y2", "Cu"), ("y2", "Y"), ("y3", "Cu")]
    assert spread_families(jobs, {}) == jobs  # without sources every structure is its own family


def test_compound_plan_puts_the_scarcest_element_first_and_caps_new_jobs(tmp_path):
    from pymatgen.core import Lattice, Structure

    from xanes_utils.feff import plan_compound_jobs
    from xanes_utils.structures import SourceStructure

    def oxide(metal, a, sub=None):
        s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5] * 3])
        source = {"substitution": {"from": "Ni", "to": metal, "oxidation_state": 2}} if sub else {}
        return SourceStructure(f"{metal}O-{a}", s, source)

    library = [oxide("Ni", 4.17), oxide("Ni", 4.3, sub=True), oxide("Ni", 4.4, sub=True),
               oxide("Zn", 4.28), oxide("Zn", 4.4, sub=True)]
    (tmp_path / "Zn").mkdir()
    for i in range(3):  # Zn has three spectra already, Ni none
        (tmp_path / "Zn" / f"done{i}.json.gz").write_bytes(b"x")
    jobs = plan_compound_jobs(library, runs_dir=tmp_path)
    assert [j.element for j in jobs] == ["Ni", "Ni", "Ni", "Zn", "Zn"]
    assert jobs[0].structure_id == "NiO-4.17"  # the unsubstituted source leads its element
    assert plan_compound_jobs(library, runs_dir=tmp_path) == jobs  # deterministic
    (tmp_path / "Ni").mkdir()
    (tmp_path / "Ni" / f"{jobs[0].id}.json.gz").write_bytes(b"x")  # one Ni job done: two Ni to go
    assert [j.element for j in plan_compound_jobs(library, runs_dir=tmp_path)] == ["Ni", "Ni", "Ni", "Zn", "Zn"]
    # the cap counts the kept jobs and fills up with the most likely new ones; kept jobs stay beyond it
    capped = plan_compound_jobs(library, max_per_element=2, keep={"NiO-4.4"})
    assert {j.structure_id for j in capped} == {"NiO-4.17", "NiO-4.4", "ZnO-4.28", "ZnO-4.4"}
    capped = plan_compound_jobs(library, max_per_element=1, keep={"NiO-4.4", "NiO-4.3"})
    assert {j.structure_id for j in capped} == {"NiO-4.3", "NiO-4.4", "ZnO-4.28"}


def test_sites_of_one_structure_share_its_relaxation(tmp_path, monkeypatch):
    from xanes_utils.relax import Relaxation, RelaxError

    calls = []

    def fake_relax(structure_id, structure_json):
        calls.append(structure_id)
        if structure_id == "bad":
            raise RelaxError("bad: implausible relaxation: volume changed by -40 % after 9 steps; stopped")
        relaxed = Structure.from_str(structure_json, fmt="json")
        relaxed.scale_lattice(relaxed.volume * 0.9)
        return relaxed, Relaxation(-5.0, -4.9, 12, 0.05, 72.5, 65.3, "fake")

    monkeypatch.setattr(feff, "compute_spectrum", _fake_compute)
    monkeypatch.setattr(feff, "_relaxed_cached", fake_relax)
    nio = json.loads(rocksalt().to_json())  # as a plan holds it
    first, second = Job("nio", 0, "Ni"), Job("nio", 1, "Ni")
    assert feff._run_job(first, nio, str(tmp_path), TINY, None, relax=True)[1] == feff.DONE
    assert feff._run_job(second, nio, str(tmp_path), TINY, None, relax=True)[1] == feff.DONE
    assert calls == ["nio"]  # the second site read the first one's record
    one, two = (read_json(tmp_path / "Ni" / f"{job.id}.json.gz") for job in (first, second))
    assert one["structure"] == two["structure"] and one["relaxation"] == two["relaxation"]
    assert two["relaxation"]["steps"] == 12 and two["initial_structure"] == nio
    # a plan structure changed under the same id is relaxed afresh
    changed = rocksalt(a=4.3).as_dict()
    assert feff._run_job(Job("nio", 2, "Ni"), changed, str(tmp_path), TINY, None, relax=True)[1] == feff.DONE
    assert calls == ["nio", "nio"]
    # a recorded relaxation failure fails the structure's other sites without relaxing again
    bad = [Job("bad", 0, "Ni"), Job("bad", 1, "Ni")]
    outcomes = [feff._run_job(job, nio, str(tmp_path), TINY, None, relax=True) for job in bad]
    assert [o[1] for o in outcomes] == [feff.FAILED, feff.FAILED] and calls.count("bad") == 1
    assert "volume changed by -40 %" in outcomes[1][2] and bad[0].id in outcomes[1][2]


def test_rerun_jobs_draws_finished_records_per_element(tmp_path):
    from xanes_utils.feff import _done_path, rerun_jobs
    from xanes_utils.io import atomic_write_json

    def record(structure_id, site, element, a):
        structure = Structure(Lattice.cubic(a), [element, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        job = Job(structure_id, site, element)
        atomic_write_json(_done_path(tmp_path, job), {
            "id": job.id, "structure_id": structure_id, "absorbing_index": site, "absorbing_element": element,
            "structure": structure.as_dict(), "y": [0.0] * 111})

    for i in range(5):
        record(f"ni{i}-relaxed", 0, "Ni", 4.0 + 0.1 * i)
    record("cu0", 0, "Cu", 4.2)
    jobs, structures = rerun_jobs(tmp_path, 3, seed=1)
    assert sorted(j.element for j in jobs) == ["Cu", "Ni", "Ni", "Ni"]
    assert set(structures) == {j.structure_id for j in jobs}
    ni = next(j for j in jobs if j.element == "Ni")
    a = Structure.from_dict(structures[ni.structure_id]).lattice.a
    assert a == pytest.approx(4.0 + 0.1 * int(ni.structure_id[2]))
    assert rerun_jobs(tmp_path, 3, seed=1)[0] == jobs and rerun_jobs(tmp_path, 3, seed=2)[0] != jobs
    assert [j.element for j in rerun_jobs(tmp_path, 10, elements=["Ni"])[0]] == ["Ni"] * 5
