"""FEFF settings convergence study: cheap candidate settings against the Materials Project's own.

Every candidate in :data:`CANDIDATES` and the reference :data:`REFERENCE` are run on the same sites
(one finished site per element, the first in the job plan's shuffled order); each spectrum is stored
like a dataset record under ``<out>/<candidate>/``, so a rerun skips what is done. :func:`compare_runs`
scores each candidate spectrum against the reference one (MSE and Pearson r on the paper's grid, shift
of the half-step edge position in eV, core-seconds), and :func:`choose` picks the candidate with the
lowest mean cost per spectrum within tolerances. Command line: ``python -m xanes_utils.convergence run --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from xanes_utils.dataset import finished_record_paths
from xanes_utils.feff import DEFAULT_SETTINGS, MP_SETTINGS, FeffSettings, Job, pending, run_tasks
from xanes_utils.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

#: The reference: MP's settings (SCF 4.5 Å, FMS 7.5 Å, XANES 3.7 0.04 0.1, 10 Å cluster) without MP's
#: LDOS card, which only adds a density-of-states calculation and does not change mu.
REFERENCE = dataclasses.replace(MP_SETTINGS, ldos=False)

#: Candidate fast settings, named ``scf<R>_fms<R>[_grid]``; ``coarse`` uses a 3x coarser XANES grid.
CANDIDATES: dict[str, FeffSettings] = {
    "scf0_fms5": dataclasses.replace(DEFAULT_SETTINGS, scf_radius=0.0),
    "scf3_fms4": dataclasses.replace(DEFAULT_SETTINGS, fms_radius=4.0),
    "scf3_fms5": DEFAULT_SETTINGS,
    "scf3_fms5_coarse": dataclasses.replace(DEFAULT_SETTINGS, xanes_kstep=0.07, xanes_estep=0.3),
    "scf3_fms6": dataclasses.replace(DEFAULT_SETTINGS, fms_radius=6.0),
    "scf4.5_fms5": dataclasses.replace(DEFAULT_SETTINGS, scf_radius=4.5),
}

def describe(name: str) -> str:
    """Readable label of a candidate (``scf0_fms5`` -> ``no SCF, FMS 5 Å``) or of ``reference``."""
    if name == "reference":
        return f"MP (SCF {REFERENCE.scf_radius:g} Å, FMS {REFERENCE.fms_radius:g} Å)"
    settings = CANDIDATES[name]
    scf = f"SCF {settings.scf_radius:g} Å" if settings.scf_radius > 0 else "no SCF"
    return f"{scf}, FMS {settings.fms_radius:g} Å" + (", 3× coarser grid" if name.endswith("_coarse") else "")


#: Absorbers of the study: six of each row.
STUDY_ELEMENTS = ("Ti", "Cr", "Fe", "Ni", "Cu", "Zn", "Y", "Nb", "Mo", "Ru", "Ag", "Cd")


def study_sites(jobs: list[Job], runs_dir: str | Path, elements=STUDY_ELEMENTS) -> list[Job]:
    """For each element, the first job in plan order that has a finished spectrum in ``runs_dir``.

    Plan order is a seeded shuffle, so this is an unbiased, reproducible pick of ordinary sites.
    """
    picked = {}
    for job in jobs:
        if job.element in elements and job.element not in picked \
                and (Path(runs_dir) / job.element / f"{job.id}.json.gz").exists():
            picked[job.element] = job
    missing = [el for el in elements if el not in picked]
    if missing:
        raise ValueError(f"no finished spectrum in {runs_dir} for {', '.join(missing)}: run `generate` first")
    return [picked[el] for el in elements]


def run_study(sites: list[Job], structures: dict[str, dict], out_dir: str | Path, workers: int | None = None,
              stage_timeout: float | None = 3600.0, names: list[str] | None = None) -> dict[str, int]:
    """Run the reference and every candidate (or only ``names``) on ``sites``, site by site, reference
    first; resumable.

    Every spectrum is computed here, under the same conditions, so the seconds compare fairly (the
    dataset's own records of these sites were computed beside other work).
    """
    settings = {"reference": REFERENCE, **CANDIDATES}
    unknown = set(names or []) - set(settings)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {', '.join(settings)}")
    settings = {k: v for k, v in settings.items() if not names or k in names}
    tasks = [(job, structures[job.structure_id], str(Path(out_dir) / name), s, stage_timeout)
             for job in sites for name, s in settings.items() if pending([job], Path(out_dir) / name)]
    log.info("%d of %d convergence runs pending in %s", len(tasks), len(sites) * len(settings), out_dir)
    return run_tasks(tasks, workers, desc="convergence")


def edge_position(energy: np.ndarray, mu: np.ndarray, level: float = 0.5) -> float:
    """Energy (eV) where the edge-step normalised ``mu`` first rises through ``level`` (linear interp.)."""
    energy, mu = np.asarray(energy, float), np.asarray(mu, float)
    above = np.flatnonzero(mu >= level)
    if above.size == 0:
        raise ValueError(f"spectrum never reaches {level} (max {mu.max():.3f}): not edge-step normalised?")
    i = above[0]
    if i == 0:
        return float(energy[0])
    return float(np.interp(level, [mu[i - 1], mu[i]], [energy[i - 1], energy[i]]))


def compare(reference: dict, candidate: dict) -> dict:
    """Scores of one candidate record against the reference record of the same site."""
    ref_y, cand_y = np.asarray(reference["y"]), np.asarray(candidate["y"])
    shift = edge_position(candidate["raw_energy"], candidate["raw_mu"]) - \
        edge_position(reference["raw_energy"], reference["raw_mu"])
    return {"mse": float(np.mean((cand_y - ref_y) ** 2)), "pearson_r": float(np.corrcoef(ref_y, cand_y)[0, 1]),
            "edge_shift_ev": float(shift), "seconds": float(candidate["seconds"]),
            "retried": bool(candidate["retried"])}


def compare_runs(out_dir: str | Path) -> pd.DataFrame:
    """One row per (site, candidate) that finished together with its reference, plus the reference's own
    rows (scores 0/1 by definition, its seconds); sites whose reference failed are left out."""
    out_dir = Path(out_dir)
    rows = []
    for ref_path in finished_record_paths(out_dir / "reference"):
        ref = read_json(ref_path)
        base = {"id": ref["id"], "element": ref["absorbing_element"], "n_atoms": len(ref["structure"]["sites"])}
        rows.append({**base, "candidate": "reference", **compare(ref, ref)})
        for name in CANDIDATES:
            path = out_dir / name / ref_path.parent.name / ref_path.name
            if path.exists():
                rows.append({**base, "candidate": name, **compare(ref, read_json(path))})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per candidate: sites, median MSE, median/min Pearson r, median/max |edge shift|, median and mean
    seconds, and total core time relative to the reference; sorted by mean seconds (what generating a
    dataset costs per spectrum)."""
    table = table.assign(abs_shift=table["edge_shift_ev"].abs())
    g = table.groupby("candidate")
    out = pd.DataFrame({
        "sites": g.size(), "median_mse": g["mse"].median(), "median_r": g["pearson_r"].median(),
        "min_r": g["pearson_r"].min(), "median_abs_shift_ev": g["abs_shift"].median(),
        "max_abs_shift_ev": g["abs_shift"].max(), "median_seconds": g["seconds"].median(),
        "mean_seconds": g["seconds"].mean(),
    })
    out["cost_vs_reference"] = out["mean_seconds"] / out.loc["reference", "mean_seconds"] \
        if "reference" in out.index else np.nan
    return out.sort_values("mean_seconds")


def choose(summary: pd.DataFrame, max_shift_ev: float = 0.5, max_median_mse: float = 1e-3) -> str:
    """The cheapest candidate (by mean seconds per spectrum) with median |edge shift| ≤ ``max_shift_ev`` (default: one
    step of the paper's grid) and median MSE ≤ ``max_median_mse`` (default: an RMS error of about 3 % of
    the edge step); raise if none qualifies."""
    ok = summary[(summary.index != "reference") & (summary["median_abs_shift_ev"] <= max_shift_ev)
                 & (summary["median_mse"] <= max_median_mse)]
    if ok.empty:
        raise ValueError(f"no candidate has median |shift| ≤ {max_shift_ev} eV and median MSE ≤ {max_median_mse}")
    return str(ok["mean_seconds"].idxmin())


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xanes_utils.convergence", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the reference and candidates on the study sites (resumable)")
    run.add_argument("--plan", default="data/plan.json.gz")
    run.add_argument("--runs", default="data/feff_runs", help="finished dataset runs (to pick sites)")
    run.add_argument("--out", default="data/convergence")
    run.add_argument("--workers", type=int, default=None)
    run.add_argument("--stage-timeout", type=float, default=3600.0)
    run.add_argument("--only", nargs="*", default=None, help="run only these settings (e.g. reference scf3_fms5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = read_json(args.plan)
    pinned = Path(args.out) / "sites.json"
    if pinned.exists():  # the study's sites stay fixed when the plan is rebuilt
        sites = [Job(**j) for j in read_json(pinned)]
    else:
        sites = study_sites([Job(**j) for j in plan["jobs"]], args.runs)
        # cheapest sites first (by the dataset's own seconds), so an interrupted study has whole sites
        sites.sort(key=lambda j: read_json(Path(args.runs) / j.element / f"{j.id}.json.gz")["seconds"])
        atomic_write_json(pinned, [dataclasses.asdict(j) for j in sites])
    log.info("study sites: %s", ", ".join(j.id for j in sites))
    log.info("convergence: %s", run_study(sites, plan["structures"], args.out, args.workers, args.stage_timeout,
                                          args.only))


if __name__ == "__main__":
    _main()
