#!/usr/bin/env python
"""Execute every numbered notebook (``notebooks/NN_*.ipynb``, in order) with papermill.

    python run_all.py                      # default profile, embedded dataset, cached results reused
    python run_all.py --profile quick      # minutes (CI smoke run)
    python run_all.py --profile paper      # the paper's dimensions and epochs (GPU)
    python run_all.py --retrain            # recompute cached models and tables
    python run_all.py --data PATH          # your own dataset (any format xanes_utils.data.load_any reads)
    python run_all.py --only 3 04          # some notebooks, by number
    python run_all.py --retrain --jobs 4   # independent trainings in 4 processes (default: one per core)

Only the default profile on the embedded data writes the committed gallery in figures/ and the cache in
results/default/; other profiles and --data write figures/<run>/ and results/<run>/ (not committed).
Executed copies go to notebooks/executed/; ``--update-notebooks`` also writes them back over the
committed notebooks (whose outputs nbval checks in CI).

``--jobs N`` sets the worker processes (one torch thread each) that train the independent models of
notebooks 02 (single-element models), 03 (the ensemble's members) and 05 (homology trainings) in
parallel, with the same weights as training them one after the other; default: one per CPU core. It
reaches the notebooks whose parameters cell declares ``jobs``. On a GPU every worker holds its own CUDA context: lower N if GPU memory runs short.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = NOTEBOOKS / "executed"
#: The local kernel's log says only that it talks to us over local TCP without encryption: keep errors.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


def write_back(executed: Path, notebook: Path) -> None:
    """Copy an executed notebook over the committed one without papermill's injected-parameters cell,
    so the committed notebook (run by nbval in CI) keeps its own defaults (e.g. ``retrain = False``), and
    without the absolute paths papermill records."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for key in ("input_path", "output_path"):  # this machine's absolute paths
        nb.metadata.get("papermill", {}).pop(key, None)
    nbformat.write(nb, notebook)


def select(notebooks: list[Path], only: list[str] | None) -> list[Path]:
    """The notebooks named by number (``3``, ``03``) or name (``03_per_element_evaluation``); raises
    ValueError naming what matches nothing."""
    if not only:
        return notebooks
    by_number = {nb.name[:2]: nb for nb in notebooks}
    picked, unknown = set(), []
    for item in only:
        key = item.removesuffix(".ipynb")
        number = f"{int(key):02d}" if key.isdigit() else key[:2]
        if number in by_number and (key.isdigit() or by_number[number].stem == key):
            picked.add(by_number[number])
        else:
            unknown.append(item)
    if unknown:
        raise ValueError(f"--only: no notebook {', '.join(map(repr, unknown))}; available: "
                         f"{', '.join(nb.stem for nb in notebooks)}")
    return sorted(picked)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", choices=["quick", "default", "paper"])
    parser.add_argument("--retrain", action="store_true", help="recompute cached results")
    parser.add_argument("--data", default=None, help="dataset path (default: the embedded dataset)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NN",
                        help="notebook numbers or names, e.g. 1 03 or 04_neuron_responses")
    parser.add_argument("--update-notebooks", action="store_true", help="copy executed notebooks back")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="parallel training processes (default: one per CPU core)")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")
    if args.update_notebooks and (args.profile != "default" or args.data):
        parser.error("--update-notebooks writes the committed notebooks: use it with the default profile "
                     "and the embedded data only")
    if args.data and not Path(args.data).exists():
        parser.error(f"--data {args.data}: no such file or directory")
    try:
        notebooks = select(sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")), args.only)
    except ValueError as exc:
        parser.error(str(exc))

    import papermill as pm
    from tqdm import tqdm

    from xanes_utils.profiles import figures_dir

    figures = figures_dir(args.profile, args.data)
    EXECUTED.mkdir(parents=True, exist_ok=True)
    params = {"profile": args.profile, "retrain": args.retrain,
              "data": str(Path(args.data).resolve()) if args.data else None}
    # torch_geometric imports tqdm.auto, which warns (with this machine's path) in a kernel without
    # ipywidgets: keep that out of the notebooks' outputs (the kernels inherit this environment).
    os.environ["PYTHONWARNINGS"] = "ignore:IProgress not found"
    rows = []
    for nb in tqdm(notebooks, desc="notebooks", unit="notebook"):
        start = time.time()
        out = EXECUTED / nb.name
        tqdm.write(f"running {nb.name} ...")
        jobs = {"jobs": args.jobs} if "jobs" in pm.inspect_notebook(str(nb)) else {}
        try:
            pm.execute_notebook(str(nb), str(out), parameters=params | jobs, cwd=str(NOTEBOOKS),
                                progress_bar=False, kernel_name="python3", extra_arguments=KERNEL_ARGUMENTS)
        except pm.PapermillExecutionError as exc:
            print(f"\nFAILED: {nb.name}, cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                  f"executed copy with the traceback: {out}", file=sys.stderr)
            return 1
        written = sorted(p.name for p in figures.glob(f"{nb.name[:2]}_*.png") if p.stat().st_mtime >= start)
        rows.append((nb.name, time.time() - start, written))
        if args.update_notebooks:
            write_back(out, nb)
    print(f"\nfigures in {figures.relative_to(ROOT)}/\n")
    print("| notebook | wall time (s) | figures written |\n|---|---:|---|")
    for name, seconds, written in rows:
        print(f"| {name} | {seconds:.0f} | {', '.join(written) or '-'} |")
    print(f"\ntotal: {sum(r[1] for r in rows):.0f} s, {sum(len(r[2]) for r in rows)} figures (PNG + PDF each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
