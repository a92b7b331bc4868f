"""FEFF10 K-edge XANES: inputs from pymatgen's MP set, runs with feff10-rs, spectra on the paper's grid.

Settings live in :class:`FeffSettings` (one place); every record stores the settings that produced it.
The runner :func:`generate` runs one FEFF process per core (or on a Dask cluster), persists every finished
spectrum atomically, records failures of a site with their reason, and skips finished and known-failed
jobs on a rerun (``--retry-failed`` reruns the failed ones). Failures of the environment (disk full, out of
memory, killed, timed out) are not recorded: those jobs stay pending. Ctrl-C or SIGTERM stops a run at
once: queued jobs are cancelled, workers and their FEFF processes killed, scratch directories removed.
Command line: ``python -m xanes_utils.feff generate --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import functools
import glob
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Sequence

import numpy as np
import psutil
from pymatgen.core import Structure

from xanes_utils.dataset import finished_record_paths
from xanes_utils.elements import ELEMENTS, check_element, energy_grid
from xanes_utils.io import atomic_write_json, read_json
from xanes_utils.structures import check_structure, source_family

log = logging.getLogger(__name__)


#: Free space (bytes) below which a failure is put down to a full disk rather than to the site.
MIN_FREE_BYTES = 64 * 2**20
#: Outcomes of one job: persisted, failure recorded, or left pending (an environment problem).
DONE, FAILED, PENDING = "done", "failed", "pending"


class FeffRunError(RuntimeError):
    """FEFF failed or produced no usable spectrum for a site."""


class FeffEnvironmentError(FeffRunError):
    """FEFF failed because of its environment (disk full, out of memory, killed, timed out), not the site."""


def environment_problem(exc: BaseException, path: str | Path) -> str | None:
    """What in the environment caused ``exc`` (disk full at ``path``, out of memory, a killed process, a
    time-out), or ``None`` for a failure of the job itself."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, MemoryError) or code == errno.ENOMEM:
        return "out of memory"
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        free = MIN_FREE_BYTES
    if code in (errno.ENOSPC, errno.EDQUOT) or free < MIN_FREE_BYTES:
        return f"disk full ({free / 2**20:.0f} MiB free at {path})"
    text = str(exc)
    if "killed by signal" in text:
        return "a FEFF process was killed (out of memory, or stopped from outside)"
    if "timed out after" in text:
        return "a FEFF stage timed out"
    return None


#: FEFF core-hole treatments :class:`FeffSettings` accepts.
COREHOLES = ("FSR", "RPA")


@dataclass(frozen=True)
class FeffSettings:
    """FEFF10 settings on top of the Materials Project XANES set (``MPXANESSet``).

    ``scf_radius``/``fms_radius`` (Å) set the SCF and FMS cards; ``xanes_kmax`` (1/Å) the XANES card's
    upper limit (4.0 1/Å ≈ 61 eV above the Fermi level, covering the 55 eV window); ``scf_mixing`` is the
    SCF convergence accelerator (MP uses 0.2; 0.05 is the safer retry). The cluster radius is
    ``fms_radius + cluster_margin``. ``ldos=False`` drops MP's LDOS card, which XANES does not need.
    ``corehole`` is FEFF's core-hole treatment: ``FSR`` (final-state rule, a full core hole: the Materials
    Project's and the embedded dataset's) or ``RPA`` (a core hole screened in the random-phase approximation:
    Lightshow's, so OmniXAS's).
    """

    scf_radius: float = 3.0
    fms_radius: float = 5.0
    xanes_kmax: float = 4.0
    xanes_kstep: float = 0.04
    xanes_estep: float = 0.1
    scf_mixing: float = 0.2
    scf_iterations: int = 30
    ldos: bool = False
    cluster_margin: float = 1.0
    corehole: str = "FSR"

    def __post_init__(self) -> None:
        if self.corehole not in COREHOLES:
            raise ValueError(f"corehole must be one of {COREHOLES}, not {self.corehole!r}")

    def tags(self) -> dict:
        """``user_tag_settings`` for :class:`pymatgen.io.feff.sets.MPXANESSet`."""
        tags = {
            "FMS": f"{self.fms_radius} 0",
            "XANES": f"{self.xanes_kmax} {self.xanes_kstep} {self.xanes_estep}",
            "COREHOLE": self.corehole,
        }
        if self.scf_radius > 0:
            tags["SCF"] = f"{self.scf_radius} 0 {self.scf_iterations} {self.scf_mixing} 1"
        delete = [] if self.scf_radius > 0 else ["SCF"]
        if not self.ldos:
            delete.append("LDOS")
        tags["_del"] = delete
        return tags

    def safer(self) -> "FeffSettings":
        """Settings for one retry after a failure: slower SCF mixing, more iterations."""
        return dataclasses.replace(self, scf_mixing=0.05, scf_iterations=60)


def complete_settings(recorded: dict) -> dict:
    """A record's ``settings`` with every :class:`FeffSettings` field it predates set to the field's default
    (each default reproduces the inputs written before the field existed, e.g. ``corehole`` FSR)."""
    return {f.name: f.default for f in dataclasses.fields(FeffSettings)} | recorded


#: Settings of the embedded dataset (see notebooks/00_feff_convergence and README).
DEFAULT_SETTINGS = FeffSettings()
#: The Materials Project's own XANES settings, the reference of the convergence study.
MP_SETTINGS = FeffSettings(scf_radius=4.5, fms_radius=7.5, xanes_kmax=3.7, ldos=True, cluster_margin=2.5)
#: The dataset's settings with Lightshow's (OmniXAS's) screened core hole.
RPA_SETTINGS = FeffSettings(corehole="RPA")


def write_inputs(structure: Structure, site: int, directory: str | Path,
                 settings: FeffSettings = DEFAULT_SETTINGS) -> Path:
    """Write ``feff.inp`` for the K edge of ``structure[site]`` into ``directory``; return its path."""
    from pymatgen.io.feff.sets import MPXANESSet

    check_structure(structure)
    check_element(structure[site].specie.symbol)
    fset = MPXANESSet(site, structure, edge="K", radius=settings.fms_radius + settings.cluster_margin,
                      user_tag_settings=settings.tags())
    fset.write_input(str(directory))
    return Path(directory) / "feff.inp"


def run_feff(directory: str | Path, stage_timeout: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run FEFF10 in ``directory`` (holding ``feff.inp``); return (energy eV, edge-step normalised mu)."""
    import feff10

    directory = str(directory)
    log_path = os.path.join(directory, "feff.log")
    try:
        with _stdout_to(log_path):
            inp = feff10.FeffInput.from_file(os.path.join(directory, "feff.inp"))
            result = feff10.FeffPipeline(feff10.FeffConfig(directory, inp, stage_timeout=stage_timeout)).run()
            table = result.read_xmu()
    except feff10.FeffError as exc:
        message = f"FEFF failed in {directory}: {exc}; last output: {_tail(log_path)}"
        problem = environment_problem(exc, directory)  # checked before the scratch directory is removed
        if problem is not None:
            raise FeffEnvironmentError(f"{problem}: {message}") from exc
        raise FeffRunError(message) from exc
    header = table.header[-1].lstrip("#").split()
    cols = table.columns
    energy = np.asarray(cols[header.index("omega")], dtype=float)
    mu = np.asarray(cols[header.index("mu")], dtype=float)
    if energy.size < 2 or not np.all(np.isfinite(mu)) or not np.all(np.diff(energy) > 0):
        raise FeffRunError(f"FEFF wrote an unusable xmu.dat in {directory} ({energy.size} rows)")
    return energy, mu


@contextlib.contextmanager
def _stdout_to(path: str) -> Iterator[None]:
    """Send file descriptor 1 (where FEFF's stage processes print) to ``path`` for the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "ab") as fh:
        os.dup2(fh.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _tail(path: str, n: int = 3) -> str:
    try:
        with open(path, errors="replace") as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def to_grid(energy: np.ndarray, mu: np.ndarray, element: str) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate a spectrum onto the paper's grid: zeros below the first computed energy.

    Above the last computed energy the last value is held (FEFF's spectrum is edge-step normalised
    and flat there); a spectrum that ends before the grid's midpoint is rejected.
    """
    grid = energy_grid(element)
    energy, mu = np.asarray(energy, float), np.asarray(mu, float)
    if energy.size < 2 or not np.all(np.diff(energy) > 0):
        raise ValueError("energies must be strictly increasing with at least two points")
    if not np.all(np.isfinite(mu)):
        raise ValueError("spectrum contains NaN or infinite values")
    if energy[-1] < grid[len(grid) // 2]:
        raise ValueError(f"spectrum ends at {energy[-1]:.1f} eV, before the {element} grid midpoint "
                         f"({grid[len(grid) // 2]:.1f} eV): wrong element or edge?")
    out = np.interp(grid, energy, mu)
    out[grid < energy[0]] = 0.0
    return grid, out


@dataclass(frozen=True)
class Job:
    """One FEFF calculation: K edge of ``site`` (an ``element`` site) in structure ``structure_id``."""

    structure_id: str
    site: int
    element: str

    @property
    def id(self) -> str:
        """Spectrum id in the Materials Project style ``<material>-<site>-<element>-XANES-K``."""
        return f"{self.structure_id}-{self.site}-{self.element}-XANES-K"


def compute_spectrum(structure: Structure, site: int, settings: FeffSettings = DEFAULT_SETTINGS,
                     stage_timeout: float | None = None, workdir: str | Path | None = None) -> dict:
    """FEFF K-edge XANES of one site; retry once with :meth:`FeffSettings.safer` on a failure of the site
    (a :class:`FeffEnvironmentError` is raised at once).

    Returns a dict with the grid spectrum, FEFF's raw (energy, mu), the settings used and the seconds
    taken by all attempts.
    """
    check_structure(structure)
    element = check_element(structure[site].specie.symbol)
    attempts = [settings, settings.safer()]
    errors = []
    start = time.perf_counter()
    for attempt, used in enumerate(attempts):
        tmp = tempfile.mkdtemp(prefix=f"feff-{element}-{site}-", dir=workdir)
        try:
            write_inputs(structure, site, tmp, used)
            energy, mu = run_feff(tmp, stage_timeout)
            grid, y = to_grid(energy, mu, element)
        except FeffEnvironmentError:
            raise
        except (FeffRunError, ValueError) as exc:
            errors.append(f"attempt {attempt + 1} ({dataclasses.asdict(used)}): {exc}")
            log.warning("FEFF attempt %d failed for %s site %d: %s", attempt + 1, element, site, exc)
            continue
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {
            "x": grid.tolist(), "y": y.tolist(), "raw_energy": energy.tolist(), "raw_mu": mu.tolist(),
            "settings": dataclasses.asdict(used), "retried": attempt > 0,
            "seconds": time.perf_counter() - start,
        }
    raise FeffRunError("; ".join(errors))


def _run_job(job: Job, structure_dict: dict, out_dir: str, settings: FeffSettings,
             stage_timeout: float | None, relax: bool = False) -> tuple[str, str, str]:
    """Worker: compute one job and persist its record or its failure; never raises.

    Returns (job id, outcome, information); the outcome is :data:`PENDING`, with nothing recorded, when
    the environment failed (:func:`environment_problem`). With ``relax`` the structure is first relaxed
    (:func:`xanes_utils.relax.relax_structure`); the record then holds the relaxed structure, the
    relaxation's summary and the structure before it.
    """
    structure = Structure.from_dict(structure_dict)
    extra: dict = {}
    try:
        if relax:
            structure, relaxation = _relaxed(job.structure_id, structure, structure_dict, out_dir)
            extra = {"relaxation": relaxation, "initial_structure": structure_dict}
            structure_dict = structure.as_dict()
        result = compute_spectrum(structure, job.site, settings, stage_timeout, workdir=_work_root(out_dir))
        record = {"id": job.id, "structure_id": job.structure_id, "absorbing_index": job.site,
                  "absorbing_element": job.element, "edge": "K", "spectrum_type": "XANES",
                  "structure": structure_dict, **extra, **result}
        atomic_write_json(_done_path(out_dir, job), record)
        return job.id, DONE, f"{result['seconds']:.1f} s"
    except FeffEnvironmentError as exc:
        return job.id, PENDING, f"{exc}; not recorded, the job stays pending for the next run"
    except Exception as exc:  # noqa: BLE001 - a batch must survive any single failure
        reason = f"{type(exc).__name__}: {exc}"
        problem = environment_problem(exc, out_dir)
        if problem is None:
            try:
                atomic_write_json(_failed_path(out_dir, job), {"id": job.id, "reason": reason,
                                                               "traceback": traceback.format_exc(limit=3)})
                return job.id, FAILED, reason
            except OSError as write_error:
                problem = environment_problem(write_error, out_dir) or f"cannot record the failure ({write_error})"
        return job.id, PENDING, f"{problem} ({reason}); not recorded, the job stays pending for the next run"


#: Scratch directories made by this process (removed by its watchdog if the parent dies).
_SCRATCH: set[str] = set()


@functools.lru_cache(maxsize=8)
def _relaxed_cached(structure_id: str, structure_json: str) -> tuple[Structure, object]:
    from xanes_utils.relax import relax_structure

    return relax_structure(Structure.from_str(structure_json, fmt="json"), name=structure_id)


def _relaxed(structure_id: str, structure: Structure, structure_dict: dict, out_dir: str) -> tuple[Structure, dict]:
    """Relaxed copy of a plan structure and the relaxation's summary. The sites of one structure share one
    relaxation: it is taken from another site's finished record in ``out_dir`` (or that site's recorded
    relaxation failure is raised again) when there is one, else computed and cached in this worker."""
    import torch

    from xanes_utils.relax import RelaxError

    earlier = _earlier_relaxation(structure_id, structure_dict, out_dir)
    if isinstance(earlier, str):
        raise RelaxError(earlier)
    if earlier is not None:
        return earlier
    torch.set_num_threads(1)
    relaxed, info = _relaxed_cached(structure_id, structure.to(fmt="json"))
    return relaxed.copy(), info.as_dict()


def _earlier_relaxation(structure_id: str, structure_dict: dict, out_dir: str) -> tuple[Structure, dict] | str | None:
    """The relaxation of ``structure_id`` done for another of its sites under ``out_dir``: (relaxed structure,
    summary) from a finished record that started from ``structure_dict``, the reason of a recorded relaxation
    failure (a string), or None. Unreadable records are passed over (the structure is then relaxed again)."""
    root = Path(out_dir)
    initial = json.dumps(structure_dict, sort_keys=True)
    for path in sorted(root.glob(f"*/{glob.escape(structure_id)}-*.json.gz")):
        try:
            record = read_json(path)
        except (OSError, ValueError) as exc:
            log.warning("%s: not reused for its structure's relaxation (%s)", path, exc)
            continue
        if (record.get("structure_id") == structure_id and "relaxation" in record
                and json.dumps(record.get("initial_structure"), sort_keys=True) == initial):
            return Structure.from_dict(record["structure"]), record["relaxation"]
    for path in sorted((root / "failed").glob(f"{glob.escape(structure_id)}-*.json")):
        try:
            reason = str(read_json(path).get("reason", ""))
        except (OSError, ValueError):
            continue
        if reason.startswith(f"RelaxError: {structure_id}: "):
            return f"{reason.removeprefix('RelaxError: ')} (as for {path.name.removesuffix('.json')})"
    return None


def _work_root(out_dir: str) -> str:
    """This process's FEFF scratch directory, ``<out_dir>/_work/w<pid>`` (see :func:`_remove_scratch`)."""
    path = os.path.join(out_dir, "_work", f"w{os.getpid()}")
    os.makedirs(path, exist_ok=True)
    _SCRATCH.add(path)
    return path


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _remove_scratch(out_dirs: Iterable[str]) -> None:
    """Delete the scratch directories (:func:`_work_root`) of processes that no longer run."""
    for out_dir in set(out_dirs):
        for path in Path(out_dir, "_work").glob("w*"):
            if not path.name[1:].isdigit() or not _alive(int(path.name[1:])):
                shutil.rmtree(path, ignore_errors=True)


def _kill_trees(pids: Iterable[int]) -> None:
    """SIGKILL processes ``pids``, then their descendants as they were (FEFF stage processes), and wait
    for all of them to die (``pids``, child processes, are left for their owner to reap).

    Every tree is listed before anything is killed: a dying worker's children would otherwise be
    orphaned out of reach (the pool terminates the other workers when one dies)."""
    roots, descendants = [], []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            descendants += root.children(recursive=True)
            roots.append(root)
    for proc in roots + descendants:  # workers first, so that none starts another stage
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(descendants, timeout=5)
    end = time.monotonic() + 5.0  # the roots too must be dead (zombies) before their scratch is removed
    while any(_alive(root.pid) for root in roots) and time.monotonic() < end:
        time.sleep(0.05)


def _init_worker(parent: int) -> None:
    """Pool worker setup: its own process group, so a terminal's Ctrl-C reaches only the parent (which
    stops the workers), default SIGTERM, and a watchdog that ends the worker if the parent dies."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watchdog").start()


def _watch_parent(parent: int) -> None:
    """Once ``parent`` is gone (even by SIGKILL), kill this worker, its FEFF processes and its scratch
    directories: a killed run leaves nothing behind, and the job, not recorded, stays pending."""
    while os.getppid() == parent:
        time.sleep(0.2)
    children = []
    with contextlib.suppress(psutil.Error):
        children = psutil.Process().children(recursive=True)
        for child in children:  # frozen: no more scratch files, and the job can neither finish nor fail
            child.suspend()
    for path in list(_SCRATCH):
        shutil.rmtree(path, ignore_errors=True)
    for child in children:
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(child.pid) != os.getpgrp():
                child.kill()
    os.killpg(os.getpgrp(), signal.SIGKILL)  # this worker and its process group at once


def _done_path(out_dir: str | Path, job: Job) -> Path:
    return Path(out_dir) / job.element / f"{job.id}.json.gz"


def _failed_path(out_dir: str | Path, job: Job) -> Path:
    return Path(out_dir) / "failed" / f"{job.id}.json"


def pending(jobs: Iterable[Job], out_dir: str | Path, retry_failed: bool = False) -> list[Job]:
    """Jobs without a finished record in ``out_dir`` and, unless ``retry_failed``, without a recorded
    failure (in the given order)."""
    return [j for j in jobs if not _done_path(out_dir, j).exists()
            and (retry_failed or not _failed_path(out_dir, j).exists())]


def finished_counts(out_dir: str | Path) -> Counter:
    """Finished records per element under ``out_dir`` (:func:`xanes_utils.dataset.finished_record_paths`)."""
    return Counter(p.parent.name for p in finished_record_paths(out_dir))


def by_deficit(jobs: list[Job], finished: Counter, done: Callable[[Job], bool] = lambda job: False) -> list[Job]:
    """Water-filling order: the next job is one of the element with the fewest finished plus already
    scheduled spectra.

    A job not ``done`` whose element has ``k`` earlier such jobs gets the key ``finished[element] + k``
    (a ``done`` job the key of the element's next one, as it adds nothing); jobs are stably sorted by it,
    so the given order is kept within an element and among equals.
    """
    seen: Counter = Counter()
    keys = []
    for job in jobs:
        keys.append(finished[job.element] + seen[job.element])
        seen[job.element] += not done(job)
    return [job for _, job in sorted(zip(keys, jobs), key=lambda kv: kv[0])]


def spread_families(jobs: list[Job], sources: dict[str, dict]) -> list[Job]:
    """``jobs`` with each element's prototype families taken in turns: a job whose structure's family
    (:func:`xanes_utils.structures.source_family` of ``sources[structure]``) has ``k`` earlier jobs of the same
    element gets the key ``k``, and jobs are stably sorted by it. So an element's first job of every
    family comes before any family's second (the substitutions of one prototype are near duplicates for
    an absorber: :mod:`xanes_utils.sampling`); jobs already finished count, as they come first in a plan."""
    seen: Counter = Counter()
    keys = []
    for job in jobs:
        family = (job.element, source_family(sources.get(job.structure_id, {}), job.structure_id))
        keys.append(seen[family])
        seen[family] += 1
    return [job for _, job in sorted(zip(keys, jobs), key=lambda kv: kv[0])]


def cluster_atoms(jobs: Iterable[Job], structures: dict[str, dict],
                  radius: float = DEFAULT_SETTINGS.fms_radius) -> dict[str, int]:
    """Atoms within ``radius`` (Å; default FEFF's FMS radius) of each job's absorber, absorber included, in
    ``structures`` (structure dicts by id; for a plan, as planned, before any relaxation), by job id. FEFF's time
    grows steeply with it: median 9 s at 16–23 atoms, 106 s at 48–55 (BENCHMARKS.md, "FEFF10 data generation")."""
    cache: dict[str, Structure] = {}
    counts = {}
    for job in jobs:
        if job.structure_id not in cache:
            cache[job.structure_id] = Structure.from_dict(structures[job.structure_id])
        structure = cache[job.structure_id]
        counts[job.id] = len(structure.get_sites_in_sphere(structure[job.site].coords, radius))
    return counts


def balanced(todo: list[Job], out_dir: str | Path) -> list[Job]:
    """Reorder pending jobs so that the elements with the fewest finished spectra catch up first
    (:func:`by_deficit`). After an interrupted run, failures or a changed plan, this keeps the dataset
    balanced over elements."""
    return by_deficit(todo, finished_counts(out_dir))


def generate(jobs: list[Job], structures: dict[str, dict], out_dir: str | Path, workers: int | None = None,
             settings: FeffSettings = DEFAULT_SETTINGS, stage_timeout: float | None = 900.0,
             scheduler: str | None = None, retry_failed: bool = False, relax: bool = False) -> dict[str, int]:
    """Run every pending job (see :func:`balanced` for the order) and persist its result under ``out_dir``;
    return counts of outcomes (see :func:`run_tasks`) and of skipped jobs.

    ``structures`` maps structure ids to pymatgen structure dicts. With ``scheduler`` (a Dask
    ``distributed`` address, or a ``distributed.Client``), jobs run on that cluster; otherwise in a local
    process pool of ``workers`` processes (default: one per core). ``retry_failed`` reruns jobs with a
    recorded failure (the record is removed first; a new failure records it again). With ``relax`` every
    structure is relaxed before FEFF (see :func:`_run_job`).
    """
    out_dir = str(out_dir)
    todo = balanced(pending(jobs, out_dir, retry_failed), out_dir)
    for job in todo:
        _failed_path(out_dir, job).unlink(missing_ok=True)
    log.info("%d of %d jobs pending in %s", len(todo), len(jobs), out_dir)
    tasks = [(job, structures[job.structure_id], out_dir, settings, stage_timeout, relax) for job in todo]
    return {**run_tasks(tasks, workers, scheduler), "skipped": len(jobs) - len(todo)}


def run_tasks(tasks: list[tuple], workers: int | None = None, scheduler=None, desc: str = "FEFF"
              ) -> dict[str, int]:
    """Run ``(job, structure_dict, out_dir, settings, stage_timeout[, relax])`` tasks with a tqdm bar.

    Each task persists its own record or failure under its ``out_dir`` (see :func:`generate`); tasks
    may differ in settings and output directory. Returns counts of the outcomes ``done``, ``failed``
    (recorded) and ``pending`` (an environment problem, nothing recorded). Ctrl-C or SIGTERM stops the
    run within seconds (:class:`KeyboardInterrupt` is raised); unfinished jobs stay pending.
    """
    from tqdm import tqdm

    counts = {DONE: 0, FAILED: 0, PENDING: 0}
    out_dirs = [str(t[2]) for t in tasks]
    _remove_scratch(out_dirs)  # left by a run that was killed
    try:
        with _sigterm_interrupts(), contextlib.closing(_execute(tasks, workers, scheduler)) as results, \
                tqdm(total=len(tasks), desc=desc, unit="spectrum") as bar:
            for job_id, outcome, info in results:
                counts[outcome] += 1
                if outcome != DONE:
                    log.warning("%s %s: %s", job_id, outcome, info)
                bar.set_postfix(counts)
                bar.update()
    except KeyboardInterrupt:
        log.warning("%s interrupted (%s); the %d unfinished jobs stay pending", desc, counts,
                    len(tasks) - sum(counts.values()))
        raise
    finally:
        _remove_scratch(out_dirs)
    return counts


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`KeyboardInterrupt` (main thread only), so a terminated run
    stops its workers as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _execute(args: list[tuple], workers: int | None, scheduler) -> Iterator[tuple[str, str, str]]:
    """Outcomes of ``_run_job(*a)`` for every ``a`` in ``args``, in completion order. Closing the iterator
    early (an exception in the consumer, Ctrl-C) cancels queued jobs and kills running ones."""
    if not args:
        return
    if scheduler is not None:
        from distributed import Client, as_completed as dask_completed

        own = not isinstance(scheduler, Client)
        client = Client(scheduler) if own else scheduler
        futures = []
        try:
            futures = [client.submit(_run_job, *a, pure=False) for a in args]
            for fut in dask_completed(futures):
                yield fut.result()
        finally:
            client.cancel(futures)
            if own:
                client.close()
        return
    pool = ProcessPoolExecutor(max_workers=workers or os.cpu_count(), initializer=_init_worker,
                               initargs=(os.getpid(),))
    try:
        futures = [pool.submit(_run_job, *a) for a in args]
        for fut in as_completed(futures):
            yield fut.result()
    except BaseException:  # KeyboardInterrupt, GeneratorExit, a broken pool: stop everything now
        processes = list((pool._processes or {}).values())  # no public accessor before Python 3.14
        pool.shutdown(wait=False, cancel_futures=True)
        _kill_trees(proc.pid for proc in processes)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def read_plans(paths: Sequence[str | Path], limit: int | None = None) -> tuple[list[Job], dict, dict, bool]:
    """The jobs, structures, sources and relax flag of one or more plan files (``plan`` writes them), merged:
    jobs in file order (each file's first ``limit``), a job that two plans share once. Raises a ValueError
    naming the files when one plan relaxes its structures and another does not, or when two plans give one
    structure id different structures."""
    jobs: dict[str, Job] = {}
    structures: dict[str, dict] = {}
    sources: dict[str, dict] = {}
    origin: dict[str, str] = {}
    relax: dict[str, bool] = {}
    for path in map(str, paths):
        plan = read_json(path)
        relax[path] = bool(plan.get("relax", False))
        for sid, structure in plan["structures"].items():
            if sid in structures and structures[sid] != structure:
                raise ValueError(f"plans {origin[sid]} and {path} give structure {sid} different structures")
            structures[sid], origin[sid] = structure, origin.get(sid, path)
        sources.update(plan.get("sources", {}))
        for job in [Job(**j) for j in plan["jobs"]][:limit]:
            jobs.setdefault(job.id, job)
    if len(set(relax.values())) > 1:
        raise ValueError("plans that relax their structures and plans that do not cannot run together: "
                         + ", ".join(f"{path} (relax {flag})" for path, flag in relax.items()))
    return list(jobs.values()), structures, sources, any(relax.values())


def progress_table(jobs: Sequence[Job], out_dir: str | Path, target: int) -> list[dict]:
    """Per element: finished spectra under ``out_dir``, recorded failures and pending jobs among ``jobs``, the
    spectra still ``needed`` for ``target``, the jobs that takes at the element's success rate among ``jobs`` so far
    (``jobs_needed``; the rate smoothed as (done + 1) / (tried + 2)), and ``short``: jobs missing from the plans to
    get there (plan more when positive)."""
    finished = finished_counts(out_dir)
    done, failed, waiting = Counter(), Counter(), Counter()
    for job in jobs:  # as pending() decides: a finished record first, then a recorded failure
        if _done_path(out_dir, job).exists():
            done[job.element] += 1
        elif _failed_path(out_dir, job).exists():
            failed[job.element] += 1
        else:
            waiting[job.element] += 1
    rows = []
    for el in ELEMENTS:
        needed = max(0, target - finished[el])
        success = (done[el] + 1) / (done[el] + failed[el] + 2)  # smoothed: no job tried yet reads as 1 in 2
        jobs_needed = int(np.ceil(needed / success))
        rows.append({"element": el, "finished": finished[el], "failed": failed[el], "pending": waiting[el],
                     "needed": needed, "jobs_needed": jobs_needed, "short": max(0, jobs_needed - waiting[el])})
    return rows


def plan_jobs(library: list, seed: int = 0) -> list[Job]:
    """Order every (structure, symmetry-distinct absorber site) round-robin over the 20 elements.

    Within an element, structures are shuffled with ``seed`` and alternate between source libraries
    (so the few example oxides are not drowned by thousands of AFLOW substitutions); each structure's
    first distinct site comes before any structure's second, so a partial dataset is balanced over
    elements and diverse.
    """
    from xanes_utils.structures import distinct_sites

    rng = np.random.default_rng(seed)
    per_element: list[list[Job]] = []
    for el in ELEMENTS:
        firsts: dict[str, list[Job]] = {}
        rest: dict[str, list[Job]] = {}
        for item in (library[i] for i in rng.permutation(len(library))):
            if el not in {e.symbol for e in item.structure.composition.elements}:
                continue
            sites = distinct_sites(item.structure, el)
            lib = item.source.get("library", "")
            firsts.setdefault(lib, []).append(Job(item.id, sites[0], el))
            rest.setdefault(lib, []).extend(Job(item.id, s, el) for s in sites[1:])
        per_element.append(_interleave(list(firsts.values())) + _interleave(list(rest.values())))
    return _interleave(per_element)


def plan_compound_jobs(library: list, seed: int = 0, runs_dir: str | Path | None = None,
                       max_per_element: int = 0, keep: Collection[str] = ()) -> list[Job]:
    """Anion-coordinated sites of an ionic library (:mod:`xanes_utils.compounds`), ordered by deficit.

    Within an element, structures come in order of chemical likelihood (unsubstituted sources first,
    then by substitution probability, ties shuffled with ``seed``); each structure's first eligible site
    comes before any structure's second. With ``max_per_element``, an element's jobs of structures not
    in ``keep`` are dropped once it has that many. The elements' lists are interleaved by deficit
    (:func:`by_deficit`): the spectra already finished in ``runs_dir`` count, and the plan's jobs
    finished there are not scheduled again.
    """
    from xanes_utils.compounds import compound_sites, rank

    ranked = rank(library, seed)
    per_element: list[list[Job]] = []
    for el in ELEMENTS:
        firsts: list[Job] = []
        rest: list[Job] = []
        for item in ranked:
            if el in {e.symbol for e in item.structure.composition.elements}:
                sites = compound_sites(item, el)
                firsts += [Job(item.id, s, el) for s in sites[:1]]
                rest += [Job(item.id, s, el) for s in sites[1:]]
        per_element.append(_capped(firsts + rest, max_per_element, keep) if max_per_element else firsts + rest)
    if runs_dir is None:
        return by_deficit(_interleave(per_element), Counter())
    return by_deficit(_interleave(per_element), finished_counts(runs_dir),
                      done=lambda job: _done_path(runs_dir, job).exists())


def rerun_jobs(runs_dir: str | Path, per_element: int, seed: int = 0,
               elements: Collection[str] | None = None) -> tuple[list[Job], dict[str, dict]]:
    """Jobs and structures to run finished records of ``runs_dir`` again (with other settings): a seeded
    uniform draw of ``per_element`` records of each element (of ``elements``, default all), on the structures
    the records were computed on (relaxed ones included, so no relaxation runs again)."""
    by_element: dict[str, list[Path]] = {}
    for path in finished_record_paths(runs_dir):
        if elements is None or path.parent.name in elements:
            by_element.setdefault(path.parent.name, []).append(path)
    rng = np.random.default_rng(seed)
    groups, structures = [], {}
    for element in sorted(by_element):
        paths = by_element[element]
        chosen = [paths[i] for i in np.sort(rng.choice(len(paths), min(per_element, len(paths)), replace=False))]
        group = []
        for path in chosen:
            rec = read_json(path)
            structures[rec["structure_id"]] = rec["structure"]
            group.append(Job(rec["structure_id"], rec["absorbing_index"], rec["absorbing_element"]))
        groups.append(group)
    return _interleave(groups), structures


def _capped(jobs: list[Job], cap: int, keep: Collection[str]) -> list[Job]:
    """``jobs`` without those of structures not in ``keep`` beyond the first ``cap`` jobs kept."""
    room = cap - sum(job.structure_id in keep for job in jobs)
    out = []
    for job in jobs:
        if job.structure_id in keep or room > 0:
            room -= job.structure_id not in keep
            out.append(job)
    return out


def _interleave(groups: list[list]) -> list:
    """Round-robin over ``groups``: the first item of each, then the second of each, and so on."""
    return [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]


def _within_cap(jobs: list[Job], structures: dict[str, dict], max_atoms: int | None) -> list[Job]:
    """``jobs`` (in order) whose :func:`cluster_atoms` is at most ``max_atoms``; all of them when it is None."""
    if max_atoms is None:
        return jobs
    sizes = cluster_atoms(jobs, structures)
    kept = [job for job in jobs if sizes[job.id] <= max_atoms]
    log.info("%d of %d jobs have at most %d atoms within the FMS radius", len(kept), len(jobs), max_atoms)
    return kept


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xanes_utils.feff", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate", help="run pending FEFF jobs of a plan (resumable; by deficit over elements, "
                                          "an element's prototype families in turns)")
    gen.add_argument("--plan", nargs="+", default=["data/plan.json.gz"],
                     help="plan files (made by `plan`); several run as one, by deficit over all their jobs")
    gen.add_argument("--out", default="data/feff_runs", help="directory of finished/failed records")
    gen.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    gen.add_argument("--limit", type=int, default=None, help="only the first N jobs of each plan")
    gen.add_argument("--scheduler", default=None, help="Dask distributed scheduler address")
    gen.add_argument("--stage-timeout", type=float, default=900.0, help="seconds per FEFF stage")
    gen.add_argument("--retry-failed", action="store_true", help="rerun jobs with a recorded failure")
    gen.add_argument("--elements", nargs="+", default=None, metavar="EL",
                     help="only these absorbing elements' jobs (e.g. Cu, to finish the element that has a "
                          "real-materials validation set first); default: every element, by deficit")
    cap_help = ("only jobs whose absorber has at most N atoms within the FMS radius in the planned structure "
                "(FEFF's time grows steeply with it; see cluster_atoms); default: every job")
    gen.add_argument("--max-cluster-atoms", type=int, default=None, metavar="N", help=cap_help)
    st = sub.add_parser("status", help="finished, failed and pending spectra per element against a target")
    st.add_argument("--plan", nargs="+", default=["data/plan.json.gz"], help="plan files whose jobs count as pending")
    st.add_argument("--out", default="data/feff_runs", help="directory of finished/failed records")
    st.add_argument("--target", type=int, default=200, help="spectra wanted per element (default 200)")
    st.add_argument("--max-cluster-atoms", type=int, default=None, metavar="N", help=cap_help)
    pl = sub.add_parser("plan", help="build the structure library and the job plan")
    pl.add_argument("--out", default="data/plan.json.gz")
    pl.add_argument("--no-minerals", action="store_true", help="skip robocrys' mineral database")
    pl.add_argument("--library", choices=("prototypes", "compounds", "polyanions"), default="prototypes",
                    help="prototypes: every source and substitution, round-robin over elements (the first "
                         "dataset); compounds: anion-coordinated sites of ionic structures, their site, "
                         "oxidation-state and anion substitutions, by likelihood within an element and by "
                         "deficit over elements, relaxed with CHGNet before FEFF; polyanions: the polyanion "
                         "compounds (phosphates, sulfates, silicates, ...) and their site substitutions that "
                         "are not in the --existing plan, ordered and relaxed as compounds")
    pl.add_argument("--existing", default="data/plan_compounds.json.gz",
                    help="polyanions: plan whose structures are not planned again")
    pl.add_argument("--runs", default="data/feff_runs",
                    help="compounds: finished records that count towards an element's spectra (deficit order)")
    pl.add_argument("--max-per-element", type=int, default=0,
                    help="compounds: drop an element's new (extension) jobs beyond N jobs (default 0: none)")
    rr = sub.add_parser("rerun", help="run a seeded sample of finished records again with other settings "
                                      "(e.g. the RPA core hole) into another directory; resumable")
    rr.add_argument("--runs", default="data/feff_runs", help="finished records to sample")
    rr.add_argument("--out", default="data/feff_runs_rpa", help="directory of the new records")
    rr.add_argument("--corehole", choices=COREHOLES, default="RPA")
    rr.add_argument("--per-element", type=int, default=40, help="records per element")
    rr.add_argument("--seed", type=int, default=0)
    rr.add_argument("--elements", nargs="+", default=None, metavar="EL", help="only these elements")
    rr.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    pk = sub.add_parser("pack", help="pack finished records into the dataset file with a manifest")
    pk.add_argument("--runs", default="data/feff_runs")
    pk.add_argument("--out", default="data/xanes_feff10_k.json.gz")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "plan":
        from xanes_utils.structures import build_library

        start = time.perf_counter()
        library = build_library(include_minerals=not args.no_minerals)
        base: list[str] = []
        if args.library == "compounds":
            from xanes_utils.compounds import compound_library, extended_library, relaxed_ids

            compounds = compound_library(library)
            library = relaxed_ids(compounds + extended_library(compounds))
            base = [s.id for s in library[:len(compounds)]]
        elif args.library == "polyanions":
            from xanes_utils.compounds import compound_library, polyanion_library
            from xanes_utils.structures import SourceStructure

            existing = read_json(args.existing) if Path(args.existing).exists() else {"structures": {}, "sources": {}}
            library = polyanion_library(compound_library(library), [
                SourceStructure(id=k, structure=Structure.from_dict(v), source=existing["sources"].get(k, {}))
                for k, v in existing["structures"].items()])
        # sites are chosen on the structures as stored in the plan (and as FEFF will see them): symmetry
        # finding can differ after the dict round trip for a few structures
        library = [dataclasses.replace(s, structure=Structure.from_dict(s.structure.as_dict())) for s in library]
        jobs = plan_jobs(library) if args.library == "prototypes" else plan_compound_jobs(
            library, runs_dir=args.runs, max_per_element=args.max_per_element, keep=set(base))
        used = {j.structure_id for j in jobs}
        library = [s for s in library if s.id in used]
        atomic_write_json(args.out, {
            "relax": args.library != "prototypes",
            "jobs": [dataclasses.asdict(j) for j in jobs],
            "structures": {s.id: s.structure.as_dict() for s in library},
            "sources": {s.id: s.source for s in library},
        })
        log.info("plan: %d jobs over %d structures in %.0f s -> %s (per element: %s)", len(jobs), len(library),
                 time.perf_counter() - start, args.out, dict(Counter(j.element for j in jobs)))
    elif args.cmd == "generate":
        try:
            jobs, structures, sources, relax = read_plans(args.plan, args.limit)
        except ValueError as exc:
            parser.error(str(exc))
        jobs = spread_families(jobs, sources)
        if args.elements:
            unknown = sorted(set(args.elements) - set(ELEMENTS))
            if unknown:
                parser.error(f"--elements: {', '.join(unknown)} not among the supported elements "
                             f"({', '.join(ELEMENTS)})")
            jobs = [job for job in jobs if job.element in args.elements]
        jobs = _within_cap(jobs, structures, args.max_cluster_atoms)  # after --elements: only their clusters
        try:
            counts = generate(jobs, structures, args.out, args.workers, stage_timeout=args.stage_timeout,
                              scheduler=args.scheduler, retry_failed=args.retry_failed, relax=relax)
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        log.info("generate: %s", counts)
    elif args.cmd == "status":
        try:
            jobs, structures = read_plans(args.plan)[:2]
        except ValueError as exc:
            parser.error(str(exc))
        jobs = _within_cap(jobs, structures, args.max_cluster_atoms)
        rows = progress_table(jobs, args.out, args.target)
        keys = list(rows[0])
        print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        print("\n".join("| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows))
        print(f"\n{sum(r['finished'] for r in rows)} spectra finished; {sum(r['needed'] for r in rows)} more needed for "
              f"{args.target} per element, about {sum(r['jobs_needed'] for r in rows)} jobs at each element's success "
              f"rate; plans short by {sum(r['short'] for r in rows)} jobs")
    elif args.cmd == "rerun":
        jobs, structures = rerun_jobs(args.runs, args.per_element, args.seed, args.elements)
        try:
            counts = generate(jobs, structures, args.out, args.workers,
                              settings=dataclasses.replace(DEFAULT_SETTINGS, corehole=args.corehole))
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        log.info("rerun: %s", counts)
    elif args.cmd == "pack":
        from xanes_utils.dataset import pack

        pack(args.runs, args.out)


if __name__ == "__main__":
    _main()
