"""First-shell chemistry of the embedded dataset and of a FEFF plan, to compare with real materials:

    python benchmarks/library_shells.py [--plan data/plan_compounds.json.gz] [--element Cu]

For every absorbing site: the majority species of its first shell (neighbours within 0.3 Å of the nearest)
and its size; reported as the share of sites with an anion (non-metal) first shell, a metallic-like one
(10 or more atoms) and the most common species and coordination numbers.
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
from xanes_utils.io import read_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default="data/plan_compounds.json.gz")
    parser.add_argument("--element", default="Cu")
    args = parser.parse_args()
    records = load_dataset()
    plan = read_json(args.plan)
    structures = {k: Structure.from_dict(v) for k, v in plan["structures"].items()}
    data_sites = [(r.structure, r.site, r.element) for r in records]
    plan_sites = [(structures[j["structure_id"]], j["site"], j["element"]) for j in plan["jobs"]]
    print(f"Machine: {describe()}\n")
    print("| set | first-shell statistics |\n|---|---|")
    for name, sites in (("embedded dataset", data_sites), (args.plan, plan_sites)):
        print(f"| {name}, all | {shell_statistics((s, i) for s, i, _ in sites).summary()} |")
        print(f"| {name}, {args.element} | "
              f"{shell_statistics((s, i) for s, i, el in sites if el == args.element).summary()} |")


if __name__ == "__main__":
    main()
