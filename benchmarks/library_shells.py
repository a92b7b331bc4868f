"""First-shell chemistry of the embedded dataset and of a FEFF plan, to compare with real materials:

    python benchmarks/library_shells.py [--plan data/plan_compounds.json.gz] [--element Cu]
    python benchmarks/library_shells.py --plan data/plan_polyanions.json.gz --max-cluster-atoms 32

For every absorbing site: the majority species of its first shell (neighbours within 0.3 Å of the nearest)
and its size; reported as the share of sites with an anion (non-metal) first shell, a metallic-like one
(10 or more atoms) and the most common species and coordination numbers. With ``--max-cluster-atoms N``
the plan's jobs are also split at N atoms within the FMS radius (what ``feff generate --max-cluster-atoms``
keeps against what it leaves).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pymatgen.core import Structure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.compounds import shell_statistics  # noqa: E402
from xanes_utils.dataset import load_dataset  # noqa: E402
from xanes_utils.feff import Job, cluster_atoms  # noqa: E402
from xanes_utils.io import read_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default="data/plan_compounds.json.gz")
    parser.add_argument("--element", default="Cu")
    parser.add_argument("--max-cluster-atoms", type=int, default=None, metavar="N")
    args = parser.parse_args()
    records = load_dataset()
    plan = read_json(args.plan)
    structures = {k: Structure.from_dict(v) for k, v in plan["structures"].items()}
    data_sites = [(r.structure, r.site, r.element) for r in records]
    jobs = [Job(**j) for j in plan["jobs"]]
    plan_sites = [(structures[j.structure_id], j.site, j.element) for j in jobs]
    sets = [("embedded dataset", data_sites), (args.plan, plan_sites)]
    if args.max_cluster_atoms is not None:
        sizes = cluster_atoms(jobs, plan["structures"])
        small = [sizes[j.id] <= args.max_cluster_atoms for j in jobs]
        sets += [(f"{args.plan}, {label} {args.max_cluster_atoms} atoms within the FMS radius",
                  [site for site, is_small in zip(plan_sites, small) if is_small == keep])
                 for label, keep in (("at most", True), ("more than", False))]
    print(f"Machine: {describe()}\n")
    print("| set | first-shell statistics |\n|---|---|")
    for name, sites in sets:
        print(f"| {name}, all | {shell_statistics((s, i) for s, i, _ in sites).summary()} |")
        print(f"| {name}, {args.element} | "
              f"{shell_statistics((s, i) for s, i, el in sites if el == args.element).summary()} |")


if __name__ == "__main__":
    main()
