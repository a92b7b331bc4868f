#!/usr/bin/env python
"""Execute every numbered notebook in order with papermill and regenerate all figures.

    python run_all.py                      # default profile, embedded dataset, cached results reused
    python run_all.py --profile quick      # minutes (CI smoke run)
    python run_all.py --profile paper      # the paper's dimensions and epochs (GPU)
    python run_all.py --retrain            # recompute cached models and tables
    python run_all.py --data PATH          # your own dataset (any format xanes_utils.data.load_any reads)

Executed copies go to notebooks/executed/; ``--update-notebooks`` also writes them back over the
committed notebooks (whose outputs nbval checks in CI).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = NOTEBOOKS / "executed"
FIGURES = ROOT / "figures"


def write_back(executed: Path, notebook: Path) -> None:
    """Copy an executed notebook over the committed one without papermill's injected-parameters cell,
    so the committed notebook (run by nbval in CI) keeps its own defaults (e.g. ``retrain = False``)."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    nbformat.write(nb, notebook)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", choices=["quick", "default", "paper"])
    parser.add_argument("--retrain", action="store_true", help="recompute cached results")
    parser.add_argument("--data", default=None, help="dataset path (default: the embedded dataset)")
    parser.add_argument("--only", nargs="*", default=None, help="notebook number prefixes, e.g. 01 03")
    parser.add_argument("--update-notebooks", action="store_true", help="copy executed notebooks back")
    args = parser.parse_args(argv)
    if args.update_notebooks and (args.profile != "default" or args.data):
        parser.error("--update-notebooks writes the committed notebooks: use it with the default profile "
                     "and the embedded data only")

    import papermill as pm
    from tqdm import tqdm

    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if nb.name[:2] in args.only]
    EXECUTED.mkdir(parents=True, exist_ok=True)
    FIGURES.mkdir(exist_ok=True)
    params = {"profile": args.profile, "retrain": args.retrain,
              "data": str(Path(args.data).resolve()) if args.data else None}
    rows = []
    for nb in tqdm(notebooks, desc="notebooks", unit="notebook"):
        start = time.time()
        out = EXECUTED / nb.name
        tqdm.write(f"running {nb.name} ...")
        try:
            pm.execute_notebook(str(nb), str(out), parameters=params, cwd=str(NOTEBOOKS),
                                progress_bar=False, kernel_name="python3")
        except pm.PapermillExecutionError as exc:
            print(f"\nFAILED: {nb.name}, cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                  f"executed copy with the traceback: {out}", file=sys.stderr)
            return 1
        figures = sorted(p.name for p in FIGURES.glob(f"{nb.name[:2]}_*.png") if p.stat().st_mtime >= start)
        rows.append((nb.name, time.time() - start, figures))
        if args.update_notebooks:
            write_back(out, nb)
    print("\n| notebook | wall time (s) | figures written |\n|---|---:|---|")
    for name, seconds, figures in rows:
        print(f"| {name} | {seconds:.0f} | {', '.join(figures) or '-'} |")
    print(f"\ntotal: {sum(r[1] for r in rows):.0f} s, {sum(len(r[2]) for r in rows)} figures (PNG + PDF each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
