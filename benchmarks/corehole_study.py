"""Which core hole: FEFF10 with the full core hole (FSR, the dataset's) against the screened one (RPA) on the
measured reference spectra of notebook 07, and how well an FSR -> RPA transfer learns the difference:

    python benchmarks/corehole_study.py --rpa-experiment /tmp/exp_rpa      # runs the RPA FEFF first if missing
    python benchmarks/corehole_study.py --rpa-experiment DIR --pairs data/feff_runs data/feff_runs_rpa
    python benchmarks/corehole_study.py --rpa-experiment DIR --transfers data/models/corehole_transfer.json

The experiment part runs FEFF10 with ``COREHOLE RPA`` (otherwise the dataset's settings) on every distinct
absorber site of the reference structures into ``--rpa-experiment`` (resumable; the FSR spectra are the
committed ``data/experiment_feff``), then scores both against experiment exactly as notebook 07 does
(min-max on the common window, leave-one-out shift per element). With ``--pairs FSR RPA`` it also reports,
per element with paired runs, the cross-validated error of :func:`xanes_utils.corehole.fit_transfer` against
the identity (FSR taken as RPA) and the mean difference alone. With ``--transfers FILE`` the shipped ensemble is
scored against experiment as trained (with the FSR FEFF's leave-one-out shifts) and mapped to RPA (with the RPA
FEFF's), on the measured spectra of the elements the file has transfers for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.corehole import ALPHAS, fit_transfer, paired_spectra  # noqa: E402
from xanes_utils.experiment import (  # noqa: E402
    FEFF_DIR, compare, feff_averages, load_measured, model_averages, reference_jobs,
)
from xanes_utils.feff import RPA_SETTINGS, generate  # noqa: E402


def against_experiment(feff: dict[str, dict], preds: dict[str, dict]) -> dict[str, list[dict]]:
    """Per core hole, :func:`compare`'s rows of ``preds[hole]`` (formula -> spectrum) against every measured spectrum
    whose compound both ``feff`` sets (formula -> site-averaged FEFF10) hold, aligned with that hole's FEFF."""
    measured = [m for m in load_measured() if all(m.formula in f for f in feff.values())]
    return {hole: compare(measured, {m.id: feff[hole][m.formula] for m in measured},
                          {m.id: preds[hole][m.formula] for m in measured},
                          {m.element: preds[hole][m.formula] for m in measured})
            for hole in ("FSR", "RPA")}


def side_by_side(rows: dict[str, list[dict]], columns: str, cell: Callable[[dict], str]) -> list[str]:
    """Markdown lines: a header with the two core holes' ``columns``, then per measured spectrum its id, compound
    and the ``cell`` of its FSR and RPA rows."""
    return [f"| measured | compound | {columns} |", "|---|---|---:|---:|"] + [
        f"| {f['id']} | {f['formula']} | {cell(f)} | {cell(r)} |" for f, r in zip(rows["FSR"], rows["RPA"])]


def experiment_rows(feff: dict[str, dict]) -> str:
    """Markdown table: FSR and RPA FEFF10 against each measured spectrum, and the medians."""
    rows = against_experiment(feff, feff)
    lines = side_by_side(rows, "FSR: MSE, Pearson r, shift (eV) | RPA: MSE, Pearson r, shift (eV)",
                         lambda row: f"{row['feff_mse']:.4f}, {row['feff_pearson']:.3f}, {row['shift']:+.1f}")
    mse = {k: np.array([row["feff_mse"] for row in v]) for k, v in rows.items()}
    n = len(rows["FSR"])
    lines.append(f"| median of {n} | | {np.median(mse['FSR']):.4f} | {np.median(mse['RPA']):.4f} |")
    lines.append(f"\nRPA closer to experiment on {int((mse['RPA'] < mse['FSR']).sum())} of {n} spectra.")
    return "\n".join(lines)


def model_rows(feff: dict[str, dict], transfers_path: str | Path) -> str:
    """Markdown table: the shipped ensemble against experiment as it is (FSR) and mapped to RPA by the transfers,
    for the measured spectra of elements with a transfer (each scored with its own FEFF's leave-one-out shift)."""
    from xanes_utils.corehole import load_transfers
    from xanes_utils.train import load_model

    transfers = load_transfers(transfers_path)
    model = {f: a.mu for f, a in model_averages(load_model()).items()}
    mapped = {m.formula: transfers[m.element].apply(model[m.formula]) for m in load_measured()
              if m.element in transfers and m.formula in model}
    if not mapped:
        return f"No measured spectrum of an element with a transfer ({', '.join(sorted(transfers))})."
    # the leave-one-out shifts need every measured spectrum; only those with a transfer are reported
    rows = {hole: [row for row in scored if row["formula"] in mapped]
            for hole, scored in against_experiment(feff, {"FSR": model, "RPA": model | mapped}).items()}
    lines = side_by_side(rows, "model as trained (FSR): MSE, r | model mapped to RPA: MSE, r",
                         lambda row: f"{row['model_mse']:.4f}, {row['model_pearson']:.3f}")
    mse = {k: np.median([row["model_mse"] for row in v]) for k, v in rows.items()}
    lines.append(f"| median of {len(rows['FSR'])} | | {mse['FSR']:.4f} | {mse['RPA']:.4f} |")
    return "\n".join(lines)


def transfer_rows(fsr_runs: str, rpa_runs: str) -> str:
    """Markdown table: per element, the cross-validated MSE of the transfer, the mean difference and the identity."""
    lines = ["| element | pairs | identity MSE | mean difference (CV) | ridge transfer (CV) | ridge strength |",
             "|---|---:|---:|---:|---:|---:|"]
    for element, (fsr, rpa, _) in paired_spectra(fsr_runs, rpa_runs).items():
        if len(fsr) < 5:
            continue
        mean_only = fit_transfer(element, fsr, rpa, alphas=[float("inf")])
        ridge = fit_transfer(element, fsr, rpa, alphas=ALPHAS)
        lines.append(f"| {element} | {len(fsr)} | {((rpa - fsr) ** 2).mean():.5f} | {mean_only.cv_mse:.5f} "
                     f"| {ridge.cv_mse:.5f} | {ridge.alpha:g} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpa-experiment", default=None, metavar="DIR",
                        help="directory for the RPA FEFF10 runs of the reference structures")
    parser.add_argument("--pairs", nargs=2, default=None, metavar=("FSR", "RPA"),
                        help="run directories of paired FSR and RPA records (`python -m xanes_utils.feff rerun`)")
    parser.add_argument("--transfers", default=None, metavar="FILE",
                        help="with --rpa-experiment: also score the shipped ensemble against experiment as it is and "
                             "mapped to RPA by these transfers")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"Machine: {describe()}\n")
    if args.rpa_experiment:
        jobs, structures = reference_jobs()
        generate(jobs, structures, args.rpa_experiment, args.workers, settings=RPA_SETTINGS)
        feff = {"FSR": feff_averages(FEFF_DIR), "RPA": feff_averages(args.rpa_experiment)}
        print(experiment_rows(feff), "\n")
        if args.transfers:
            print(model_rows(feff, args.transfers), "\n")
    if args.pairs:
        print(transfer_rows(*args.pairs))


if __name__ == "__main__":
    main()
