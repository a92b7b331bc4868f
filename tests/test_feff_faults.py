"""FEFF runner under faults: Ctrl-C, SIGTERM and SIGKILL of `generate`, a full disk, --retry-failed.

Jobs run a fake FEFF (a `sleep` child process stands for a FEFF stage), never the real program.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from pymatgen.core import Lattice, Structure

from xanes_utils import feff
from xanes_utils.feff import FAILED, PENDING, Job, generate, pending, to_grid
from xanes_utils.io import atomic_write_json, read_json

ROOT = Path(__file__).resolve().parents[1]
NIO = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.17), ["Ni", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
#: Job 0 finishes at once; the others hang in a FEFF "stage" until stopped.
JOBS = [Job("s0", 0, "Ni")] + [Job(f"s{i}", 1, "Ni") for i in range(1, 6)]

DRIVER = '''
import os, signal, subprocess, sys, tempfile
from pathlib import Path
import numpy as np
from xanes_utils import feff

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)

def fake_compute(structure, site, settings, stage_timeout, workdir=None):
    tempfile.mkdtemp(prefix="feff-", dir=workdir)  # FEFF's scratch, never removed by this fake
    if site == 0:
        x, y = feff.to_grid(np.linspace(8340, 8400, 61), np.linspace(0, 1, 61), "Ni")
        return {"x": x.tolist(), "y": y.tolist(), "raw_energy": [], "raw_mu": [], "settings": {},
                "retried": False, "seconds": 0.0}
    stage = subprocess.Popen(["sleep", "600"])
    (Path(sys.argv[1]) / f"{os.getpid()}-{stage.pid}").touch()
    stage.wait()
    raise feff.FeffRunError(f"stage 'pot' failed: killed by signal {-stage.returncode}")

feff.compute_spectrum = fake_compute
feff._main(["generate", "--plan", sys.argv[2], "--out", sys.argv[3], "--workers", "2"])
'''


def quick_compute(structure, site, settings, stage_timeout, workdir=None):
    x, y = to_grid(np.linspace(8340, 8400, 61), np.linspace(0, 1, 61), "Ni")
    return {"x": x.tolist(), "y": y.tolist(), "raw_energy": [], "raw_mu": [], "settings": {},
            "retried": False, "seconds": 0.0}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def write_plan(path: Path) -> None:
    atomic_write_json(path, {"jobs": [dataclasses.asdict(j) for j in JOBS],
                             "structures": {j.structure_id: NIO.as_dict() for j in JOBS}})


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_stopped_generate_leaves_no_process_or_scratch_and_loses_nothing(tmp_path, monkeypatch, how):
    plan, out, pids = tmp_path / "plan.json.gz", tmp_path / "runs", tmp_path / "pids"
    pids.mkdir()
    write_plan(plan)
    (tmp_path / "driver.py").write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = tmp_path / "driver.log"
    with open(log, "wb") as fh:
        driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(pids), str(plan), str(out)],
                                  env=env, start_new_session=True, stdout=fh, stderr=subprocess.STDOUT)
    try:
        done = out / "Ni" / f"{JOBS[0].id}.json.gz"
        started = wait_for(lambda: len(list(pids.iterdir())) == 2 and done.exists(), 120)
        assert started, f"jobs did not start: {log.read_text()[-2000:]}"
        started = [int(p) for f in pids.iterdir() for p in f.name.split("-")]
        assert all(alive(p) for p in started)
        # A terminal's Ctrl-C signals the whole foreground process group; SIGTERM/SIGKILL the runner only.
        if how == "ctrl-c":
            os.killpg(driver.pid, signal.SIGINT)
        else:
            os.kill(driver.pid, signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        stopped = time.monotonic()
        rc = driver.wait(timeout=10)
        assert rc == (-signal.SIGKILL if how == "sigkill" else 130), log.read_text()[-2000:]
        assert wait_for(lambda: not any(alive(p) for p in started), 10 - (time.monotonic() - stopped))
        assert wait_for(lambda: not any((out / "_work").iterdir()), 5), list((out / "_work").iterdir())
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    # Nothing lost: the finished record is intact, no failure was recorded for the stopped jobs,
    # and a rerun completes the plan.
    assert read_json(done)["id"] == JOBS[0].id
    assert not (out / "failed").exists() or not any((out / "failed").iterdir())
    assert [j.id for j in pending(JOBS, out)] == [j.id for j in JOBS[1:]]
    monkeypatch.setattr(feff, "compute_spectrum", quick_compute)
    counts = generate(JOBS, {j.structure_id: NIO.as_dict() for j in JOBS}, out, workers=2)
    assert counts == {"done": 5, "failed": 0, "pending": 0, "skipped": 1} and pending(JOBS, out) == []


class FailingStage:
    """Stands for feff10.FeffPipeline: the 'atomic' stage fails as it does on a full disk."""

    def __init__(self, config):
        pass

    def run(self):
        import feff10

        raise feff10.FeffError("stage 'atomic' failed (exit code 38)")


def test_full_disk_records_no_failure_and_a_rerun_completes(tmp_path, monkeypatch, caplog):
    import feff10

    jobs = [Job("nio", 0, "Ni"), Job("nio", 1, "Ni")]
    structures = {"nio": NIO.as_dict()}
    real_usage = shutil.disk_usage
    monkeypatch.setattr(feff10, "FeffPipeline", FailingStage)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=2**20))
    counts = generate(jobs, structures, tmp_path, workers=1)
    assert counts == {"done": 0, "failed": 0, "pending": 2, "skipped": 0}
    assert "disk full (1 MiB free" in caplog.text and "stage 'atomic' failed (exit code 38)" in caplog.text
    assert "not recorded, the job stays pending" in caplog.text
    assert not (tmp_path / "failed").exists() and pending(jobs, tmp_path) == jobs
    assert not any((tmp_path / "_work").iterdir())

    # A full disk can also fail the writes themselves (the failure record included).
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    monkeypatch.setattr(feff, "compute_spectrum", no_space)
    caplog.clear()
    assert generate(jobs, structures, tmp_path, workers=1)["pending"] == 2
    assert "disk full" in caplog.text and "No space left on device" in caplog.text
    assert pending(jobs, tmp_path) == jobs

    monkeypatch.setattr(feff, "compute_spectrum", quick_compute)  # space freed
    assert generate(jobs, structures, tmp_path, workers=1) == {"done": 2, "failed": 0, "pending": 0, "skipped": 0}


@pytest.mark.parametrize("message, problem", [
    ("stage 'pot' timed out after 900 s", "timed out"),
    ("stage 'fms' failed: killed by signal 9", "killed"),
])
def test_timeouts_and_killed_stages_are_environment_problems(tmp_path, message, problem):
    assert problem in feff.environment_problem(RuntimeError(message), tmp_path)
    assert feff.environment_problem(RuntimeError("stage 'pot' failed (exit code 1)"), tmp_path) is None
    assert "out of memory" in feff.environment_problem(MemoryError(), tmp_path)


def test_retry_failed_reruns_recorded_failures(tmp_path, monkeypatch):
    plan = tmp_path / "plan.json.gz"
    write_plan(plan)
    out = tmp_path / "runs"

    def fails_on_site_1(structure, site, settings, stage_timeout, workdir=None):
        if site == 1:
            raise feff.FeffRunError("SCF pot stage: negative density")
        return quick_compute(structure, site, settings, stage_timeout)

    monkeypatch.setattr(feff, "compute_spectrum", fails_on_site_1)
    args = ["generate", "--plan", str(plan), "--out", str(out), "--workers", "1"]
    feff._main(args)
    assert len(list((out / "failed").iterdir())) == 5 and len(pending(JOBS, out)) == 0
    monkeypatch.setattr(feff, "compute_spectrum", quick_compute)
    feff._main(args)  # failures are skipped
    assert len(list((out / "failed").iterdir())) == 5
    feff._main(args + ["--retry-failed"])
    assert not any((out / "failed").iterdir()) and pending(JOBS, out) == []
    assert len(list((out / "Ni").glob("*.json.gz"))) == 6
    assert FAILED == "failed" and PENDING == "pending"


def test_generate_elements_runs_only_those_elements(tmp_path, monkeypatch):
    plan = tmp_path / "plan.json.gz"
    jobs = [Job("s0", 0, "Ni"), Job("s1", 1, "Cu")]
    atomic_write_json(plan, {"jobs": [dataclasses.asdict(j) for j in jobs],
                             "structures": {j.structure_id: NIO.as_dict() for j in jobs}})
    out = tmp_path / "runs"
    monkeypatch.setattr(feff, "compute_spectrum", quick_compute)
    args = ["generate", "--plan", str(plan), "--out", str(out), "--workers", "1"]
    feff._main(args + ["--elements", "Cu"])
    assert pending(jobs, out) == [jobs[0]]
    with pytest.raises(SystemExit):
        feff._main(args + ["--elements", "Xx"])
    assert pending(jobs, out) == [jobs[0]]


def test_generate_runs_several_plans_as_one(tmp_path, monkeypatch):
    jobs = [Job("s0", 0, "Ni"), Job("s1", 1, "Cu"), Job("s2", 0, "Ni")]
    plans = [tmp_path / "a.json.gz", tmp_path / "b.json.gz", tmp_path / "relaxed.json.gz", tmp_path / "other.json.gz"]
    for path, part, extra in ((plans[0], jobs[:2], {}), (plans[1], jobs[1:], {}), (plans[2], jobs[2:], {"relax": True}),
                              (plans[3], jobs[:1], {})):
        structure = NIO.copy() if path != plans[3] else NIO.copy().scale_lattice(80.0)
        atomic_write_json(path, {"jobs": [dataclasses.asdict(j) for j in part], **extra,
                                 "structures": {j.structure_id: structure.as_dict() for j in part}})
    merged, structures, _, relax = feff.read_plans(plans[:2])
    assert merged == jobs and set(structures) == {"s0", "s1", "s2"} and relax is False  # the shared job once
    assert feff.read_plans(plans[:2], limit=1)[0] == [jobs[0], jobs[1]]  # the first job of each plan
    with pytest.raises(ValueError, match="relaxed.json.gz"):
        feff.read_plans([plans[0], plans[2]])
    with pytest.raises(ValueError, match="structure s0"):
        feff.read_plans([plans[0], plans[3]])
    out = tmp_path / "runs"
    monkeypatch.setattr(feff, "compute_spectrum", quick_compute)
    args = ["generate", "--out", str(out), "--workers", "1", "--plan"]
    with pytest.raises(SystemExit):
        feff._main(args + [str(plans[0]), str(plans[2])])
    assert pending(jobs, out) == jobs  # nothing ran
    feff._main(args + [str(plans[0]), str(plans[1])])
    assert pending(jobs, out) == []


def test_status_counts_finished_failed_and_pending_against_a_target(tmp_path, monkeypatch, capsys):
    jobs = [Job("s0", 0, "Ni"), Job("s1", 1, "Ni"), Job("s2", 0, "Ni"), Job("s3", 0, "Cu")]
    plan = tmp_path / "plan.json.gz"
    atomic_write_json(plan, {"jobs": [dataclasses.asdict(j) for j in jobs],
                             "structures": {j.structure_id: NIO.as_dict() for j in jobs}})
    out = tmp_path / "runs"
    monkeypatch.setattr(feff, "compute_spectrum", quick_compute)
    generate(jobs[:1], {"s0": NIO.as_dict()}, out, workers=1)
    atomic_write_json(out / "failed" / f"{jobs[1].id}.json", {"id": jobs[1].id, "reason": "FeffRunError: pot"})
    rows = {r["element"]: r for r in feff.progress_table(jobs, out, target=3)}
    assert rows["Ni"] == {"element": "Ni", "finished": 1, "failed": 1, "pending": 1, "needed": 2,
                          "jobs_needed": 4, "short": 3}  # success rate (1 + 1) / (2 + 2)
    assert rows["Cu"] == {"element": "Cu", "finished": 0, "failed": 0, "pending": 1, "needed": 3,
                          "jobs_needed": 6, "short": 5}
    assert rows["Fe"]["needed"] == 3 and rows["Fe"]["pending"] == 0
    feff._main(["status", "--plan", str(plan), "--out", str(out), "--target", "1"])
    text = capsys.readouterr().out
    assert "| Ni | 1 | 1 | 1 | 0 | 0 | 0 |" in text and "19 more needed for 1 per element" in text


def test_max_cluster_atoms_runs_only_jobs_with_small_fms_clusters(tmp_path, monkeypatch, capsys):
    # rock salt with a = 4.17 Å: 1 + 6 + 12 + 8 + 6 + 24 atoms within 5 Å of Ni; with a = 6 Å: 1 + 6 + 12
    structures = {"dense": NIO.as_dict(), "open": NIO.copy().scale_lattice(6.0 ** 3).as_dict()}
    jobs = [Job("dense", 0, "Ni"), Job("open", 0, "Ni")]
    assert feff.cluster_atoms(jobs, structures) == {jobs[0].id: 57, jobs[1].id: 19}
    assert feff.cluster_atoms(jobs[:1], structures, radius=3.0) == {jobs[0].id: 19}
    plan = tmp_path / "plan.json.gz"
    atomic_write_json(plan, {"jobs": [dataclasses.asdict(j) for j in jobs], "structures": structures})
    out = tmp_path / "runs"
    feff._main(["status", "--plan", str(plan), "--out", str(out), "--target", "1", "--max-cluster-atoms", "19"])
    assert "| Ni | 0 | 0 | 1 | 1 | 2 | 1 |" in capsys.readouterr().out  # only the open structure's job counts
    monkeypatch.setattr(feff, "compute_spectrum", quick_compute)
    feff._main(["generate", "--plan", str(plan), "--out", str(out), "--workers", "1", "--max-cluster-atoms", "56"])
    assert pending(jobs, out) == [jobs[0]]
