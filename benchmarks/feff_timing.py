"""FEFF10 seconds per spectrum, per element, from the finished records of a generation run.

    python benchmarks/feff_timing.py [--runs data/feff_runs]
    python benchmarks/feff_timing.py --study data/convergence     # seconds per settings of the study
    python benchmarks/feff_timing.py --match=-relaxed-            # only the relaxed compounds' spectra
    python benchmarks/feff_timing.py --plan data/plan_polyanions.json.gz   # only that plan's structures
    python benchmarks/feff_timing.py --match=-relaxed- --by-cluster 8      # seconds against cluster size

Each record stores the wall time of its FEFF run(s) on one core (a retry included); this prints a
markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.elements import ELEMENTS  # noqa: E402
from xanes_utils.feff import Job, cluster_atoms  # noqa: E402
from xanes_utils.io import read_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", default="data/feff_runs")
    parser.add_argument("--study", default=None, help="a convergence-study directory instead of --runs")
    parser.add_argument("--match", default="", help="only records whose file name contains this text")
    parser.add_argument("--plan", default=None, help="only records of structures of this plan file")
    parser.add_argument("--by-cluster", type=int, default=None, metavar="WIDTH",
                        help="instead of per element: seconds against the atoms within the FMS radius of the "
                             "absorber (feff.cluster_atoms, in the structure FEFF ran on), in bins of WIDTH atoms")
    args = parser.parse_args()
    if args.study:
        study_table(Path(args.study))
        return
    runs = Path(args.runs)
    seconds: dict[str, list[float]] = {}
    sizes: list[int] = []  # with --by-cluster: each record's cluster atoms and seconds, in step
    timed: list[float] = []
    retried = 0
    planned = set(read_json(args.plan)["structures"]) if args.plan else None
    for path in runs.glob("*/*.json.gz"):
        if path.parent.name in ELEMENTS and args.match in path.name:
            rec = read_json(path)
            if planned is not None and rec["structure_id"] not in planned:
                continue
            seconds.setdefault(rec["absorbing_element"], []).append(rec["seconds"])
            if args.by_cluster:
                job = Job(rec["structure_id"], rec["absorbing_index"], rec["absorbing_element"])
                sizes.append(cluster_atoms([job], {job.structure_id: rec["structure"]})[job.id])
                timed.append(rec["seconds"])
            retried += bool(rec["retried"])
    failed = len(list(runs.glob("failed/*.json")))
    every = np.concatenate([np.asarray(v) for v in seconds.values()])
    print(f"Machine: {describe()}\n")
    if args.by_cluster:
        cluster_table(np.asarray(sizes), np.asarray(timed), args.by_cluster)
        return
    print("| element | spectra | median s | mean s | max s |\n|---|---:|---:|---:|---:|")
    for el in ELEMENTS:
        if el in seconds:
            s = np.asarray(seconds[el])
            print(f"| {el} | {s.size} | {np.median(s):.0f} | {s.mean():.0f} | {s.max():.0f} |")
    print(f"| all | {every.size} | {np.median(every):.0f} | {every.mean():.0f} | {every.max():.0f} |")
    print(f"\n{retried} spectra needed the safer-settings retry; {failed} sites failed twice and were skipped.")


def cluster_table(sizes: np.ndarray, seconds: np.ndarray, width: int) -> None:
    """Print seconds per spectrum against the FMS cluster's atom count, in bins of ``width`` atoms, with the
    share of all FEFF time each bin took."""
    print("| atoms within FMS radius | spectra | median s | mean s | 90th percentile s | share of FEFF time |\n"
          "|---|---:|---:|---:|---:|---:|")
    for lo in range(int(sizes.min()) // width * width, int(sizes.max()) + 1, width):
        s = seconds[(sizes >= lo) & (sizes < lo + width)]
        if s.size:
            print(f"| {lo}–{lo + width - 1} | {s.size} | {np.median(s):.0f} | {s.mean():.0f} | "
                  f"{np.percentile(s, 90):.0f} | {s.sum() / seconds.sum():.0%} |")
    print(f"| all | {seconds.size} | {np.median(seconds):.0f} | {seconds.mean():.0f} | "
          f"{np.percentile(seconds, 90):.0f} | 100% |")
    print(f"\nSpearman correlation of seconds with cluster atoms: {spearmanr(sizes, seconds)[0]:.2f}")


def study_table(study: Path) -> None:
    """Seconds per spectrum of every setting of the convergence study, on the same sites."""
    from xanes_utils.convergence import compare_runs

    table = compare_runs(study)
    print(f"Machine: {describe()}; {table.id.nunique()} sites, the same for every setting\n")
    print("| settings | median s | mean s | max s |\n|---|---:|---:|---:|")
    for name, s in table.groupby("candidate")["seconds"]:
        print(f"| {name} | {s.median():.0f} | {s.mean():.0f} | {s.max():.0f} |")


if __name__ == "__main__":
    main()
