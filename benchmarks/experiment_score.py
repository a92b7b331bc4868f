"""Score any checkpoint against the measured reference spectra of notebook 07, as the notebook scores the
shipped ensemble:

    python benchmarks/experiment_score.py --model data/models/family_bucket_ensemble.pt /tmp/ens/*.pt

Per model: the median over the measured spectra (XASLIB, min-max on the common window, one leave-one-out
shift per element fitted on our FEFF10 spectra) of the MSE and Pearson r against experiment, the median ratio
model MSE / FEFF MSE, how many spectra are within 2x of FEFF, η against the embedded training split's mean
spectrum of the element (median baseline MSE / median model MSE), and the median MSE between the model's
and FEFF10's curves (what the model is trained to predict, on real compounds). The FEFF10 spectra are the committed
``data/experiment_feff``. Nothing is written to disk but the ignored graph and site-embedding caches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from real_materials import training_mean  # noqa: E402

from xanes_utils import experiment  # noqa: E402
from xanes_utils.ensemble import DEFAULT_ENSEMBLE  # noqa: E402
from xanes_utils.train import load_model  # noqa: E402


def score(rows: list[dict]) -> dict[str, float]:
    """Medians over the rows of :func:`xanes_utils.experiment.compare`."""
    med = {k: float(np.median([r[k] for r in rows]))
           for k in ("model_mse", "feff_mse", "baseline_mse", "mse_ratio", "model_pearson")}
    med["within_2x"] = sum(r["mse_ratio"] <= 2 for r in rows)
    med["eta"] = med["baseline_mse"] / med["model_mse"]
    med["model_feff_mse"] = float(np.median([experiment.metrics(r["feff"], r["model"])["mse"] for r in rows]))
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=[str(DEFAULT_ENSEMBLE)], help="checkpoints to score")
    args = parser.parse_args()

    kept = [m for m in experiment.load_measured() if m.formula in experiment.REFERENCE_STRUCTURES]
    feff = experiment.feff_averages()
    feff_by_id = {m.id: feff[m.formula] for m in kept}
    baseline = training_mean()
    print(f"Machine: {describe()}; {len(kept)} measured spectra of {len({m.formula for m in kept})} compounds\n")
    print("| model | median MSE | median Pearson r | median MSE / FEFF's | within 2x of FEFF | η (training mean) | "
          "median MSE model / FEFF10 curves |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in args.model:
        predicted = experiment.model_averages(load_model(path))
        rows = experiment.compare(kept, feff_by_id, {m.id: predicted[m.formula].mu for m in kept}, baseline)
        s = score(rows)
        print(f"| {path} | {s['model_mse']:.4f} | {s['model_pearson']:.3f} | {s['mse_ratio']:.2f} | "
              f"{s['within_2x']} of {len(rows)} | {s['eta']:.2f} | {s['model_feff_mse']:.4f} |")
    print(f"\nFEFF10 on the published structures: median MSE {s['feff_mse']:.4f}; "
          f"training mean: {s['baseline_mse']:.4f}")


if __name__ == "__main__":
    main()
