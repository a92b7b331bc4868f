"""Convergence study: edge position, scores, choice of settings, site pick and resumable task list."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from xanes_utils import convergence
from xanes_utils.elements import energy_grid
from xanes_utils.feff import DEFAULT_SETTINGS, Job
from xanes_utils.io import atomic_write_json


def step(energy, e0, width=1.5):
    """Edge-step normalised arctan edge whose half-step point is ``e0``."""
    return 0.5 + np.arctan((energy - e0) / width) / np.pi


def record(job: Job, e0: float, seconds: float, retried: bool = False) -> dict:
    raw_e = np.linspace(energy_grid(job.element)[0] - 20, energy_grid(job.element)[-1] + 20, 400)
    raw_mu = step(raw_e, e0)
    grid = energy_grid(job.element)
    structure = Structure(Lattice.cubic(3.0), [job.element], [[0, 0, 0]])
    return {"id": job.id, "structure_id": job.structure_id, "absorbing_index": job.site,
            "absorbing_element": job.element, "x": grid.tolist(), "y": np.interp(grid, raw_e, raw_mu).tolist(),
            "raw_energy": raw_e.tolist(), "raw_mu": raw_mu.tolist(), "seconds": seconds, "retried": retried,
            "structure": structure.as_dict(), "settings": {}}


def test_edge_position_finds_half_step_between_grid_points():
    energy = np.arange(7100.0, 7160.0, 0.7)
    assert convergence.edge_position(energy, step(energy, 7123.3)) == pytest.approx(7123.3, abs=0.02)


def test_edge_position_rejects_unnormalised_spectrum():
    energy = np.linspace(0, 10, 50)
    with pytest.raises(ValueError, match="never reaches"):
        convergence.edge_position(energy, 0.1 * step(energy, 5.0))


def test_compare_measures_shift_and_similarity():
    job = Job("s", 0, "Fe")
    e0 = energy_grid("Fe")[20]
    ref, same, shifted = record(job, e0, 100), record(job, e0, 10), record(job, e0 + 2.0, 10)
    assert convergence.compare(ref, same)["mse"] == pytest.approx(0.0)
    assert convergence.compare(ref, same)["pearson_r"] == pytest.approx(1.0)
    scores = convergence.compare(ref, shifted)
    assert scores["edge_shift_ev"] == pytest.approx(2.0, abs=0.02)
    assert scores["mse"] > 1e-3 and scores["pearson_r"] < 1.0


def write_study(tmp_path, shifts: dict[str, float], seconds: dict[str, float], elements=("Fe", "Mo")):
    for el in elements:
        job = Job(f"struct-{el}", 0, el)
        e0 = energy_grid(el)[20]
        atomic_write_json(tmp_path / "reference" / el / f"{job.id}.json.gz", record(job, e0, 1000))
        for name, shift in shifts.items():
            atomic_write_json(tmp_path / name / el / f"{job.id}.json.gz", record(job, e0 + shift, seconds[name]))


def test_summary_and_choice_pick_cheapest_within_tolerance(tmp_path):
    shifts = {"scf0_fms5": 6.0, "scf3_fms4": 0.2, "scf3_fms5": 0.1, "scf3_fms6": 0.0}
    seconds = {"scf0_fms5": 10, "scf3_fms4": 40, "scf3_fms5": 60, "scf3_fms6": 90}
    write_study(tmp_path, shifts, seconds)
    table = convergence.compare_runs(tmp_path)
    assert len(table) == 2 * (1 + len(shifts))
    summary = convergence.summarise(table)
    assert summary.loc["scf0_fms5", "median_abs_shift_ev"] == pytest.approx(6.0, abs=0.05)
    assert summary.loc["scf3_fms6", "cost_vs_reference"] == pytest.approx(0.09)
    assert convergence.choose(summary, max_shift_ev=0.5) == "scf3_fms4"
    assert convergence.choose(summary, max_shift_ev=0.15) == "scf3_fms5"
    assert convergence.choose(summary, max_median_mse=1e-12) == "scf3_fms6"
    with pytest.raises(ValueError, match="no candidate"):
        convergence.choose(summary, max_median_mse=-1.0)


def test_compare_runs_leaves_out_sites_without_reference(tmp_path):
    write_study(tmp_path, {"scf3_fms5": 0.0}, {"scf3_fms5": 5}, elements=("Fe",))
    orphan = Job("orphan", 0, "Ni")
    atomic_write_json(tmp_path / "scf3_fms5" / "Ni" / f"{orphan.id}.json.gz", record(orphan, 8340, 5))
    assert set(convergence.compare_runs(tmp_path)["element"]) == {"Fe"}


def test_study_sites_takes_first_finished_site_per_element(tmp_path):
    jobs = [Job("a", 0, "Fe"), Job("b", 1, "Fe"), Job("c", 0, "Mo"), Job("d", 0, "Mo")]
    for job in jobs[1:]:
        atomic_write_json(tmp_path / job.element / f"{job.id}.json.gz", {})
    assert convergence.study_sites(jobs, tmp_path, ("Fe", "Mo")) == [jobs[1], jobs[2]]
    with pytest.raises(ValueError, match="Ni"):
        convergence.study_sites(jobs, tmp_path, ("Fe", "Ni"))


def test_run_study_lists_every_setting_of_every_site_and_skips_finished(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(convergence, "run_tasks", lambda tasks, workers, desc: seen.extend(tasks) or {})
    a, b = Job("x", 0, "Fe"), Job("y", 0, "Mo")
    atomic_write_json(tmp_path / "reference" / "Fe" / f"{a.id}.json.gz", record(a, 7130, 500))
    convergence.run_study([a, b], {"x": {}, "y": {}}, tmp_path)
    names = [(t[0].id, t[2].split("/")[-1]) for t in seen]
    assert len(names) == 2 * (1 + len(convergence.CANDIDATES)) - 1
    assert (a.id, "reference") not in names and (b.id, "reference") in names
    assert all(t[3] == DEFAULT_SETTINGS for t in seen if t[2].endswith("scf3_fms5"))


def test_run_study_can_run_only_named_settings(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(convergence, "run_tasks", lambda tasks, workers, desc: seen.extend(tasks) or {})
    convergence.run_study([Job("x", 0, "Fe")], {"x": {}}, tmp_path, names=["scf3_fms5"])
    assert [t[2].split("/")[-1] for t in seen] == ["scf3_fms5"]
    with pytest.raises(ValueError, match="unknown settings"):
        convergence.run_study([Job("x", 0, "Fe")], {"x": {}}, tmp_path, names=["scf9"])


def test_cli_pins_the_study_sites_across_plan_changes(tmp_path, monkeypatch):
    runs, out, plan = tmp_path / "runs", tmp_path / "study", tmp_path / "plan.json.gz"
    jobs = [Job("a", 0, el) for el in convergence.STUDY_ELEMENTS] + [Job("b", 0, el) for el in convergence.STUDY_ELEMENTS]
    for i, job in enumerate(jobs):
        atomic_write_json(runs / job.element / f"{job.id}.json.gz", {"seconds": float(len(jobs) - i)})
    picked = []
    monkeypatch.setattr(convergence, "run_study", lambda sites, *a: picked.append(sites) or {})
    argv = ["run", "--plan", str(plan), "--runs", str(runs), "--out", str(out)]
    atomic_write_json(plan, {"jobs": [vars(j) for j in jobs], "structures": {}})
    convergence._main(argv)
    atomic_write_json(plan, {"jobs": [vars(j) for j in reversed(jobs)], "structures": {}})
    convergence._main(argv)
    assert {j.structure_id for j in picked[0]} == {"a"} and picked[1] == picked[0]
    assert [j.element for j in picked[0]] == list(reversed(convergence.STUDY_ELEMENTS))  # cheapest first


def test_candidates_have_distinct_readable_labels():
    labels = {name: convergence.describe(name) for name in [*convergence.CANDIDATES, "reference"]}
    assert labels["scf0_fms5"] == "no SCF, FMS 5 Å" and labels["scf3_fms5_coarse"].endswith("3× coarser grid")
    assert labels["reference"] == "MP (SCF 4.5 Å, FMS 7.5 Å)" and len(set(labels.values())) == len(labels)
