"""Prediction speed of the shipped ensemble against one of its members, side by side, one torch thread.

Two measurements, each interleaved (member, ensemble, member, ...) ``--repeat`` times, min and median:

* graphs: spectra/s from prebuilt graphs (``predict_graphs`` / ``predict_ensemble``, batch 512) of the
  embedded test split (with the site embeddings the ensemble reads);
* structures: spectra/s of ``xanes_utils.predict`` on the published reference structures of notebook 07
  (symmetry analysis, graph building and, for a model that reads them, CHGNet site embeddings included).

    python benchmarks/ensemble_speed.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.ensemble import predict_ensemble  # noqa: E402
from xanes_utils.experiment import REFERENCE_STRUCTURES  # noqa: E402
from xanes_utils.prediction import predict  # noqa: E402
from xanes_utils.profiles import get_profile  # noqa: E402
from xanes_utils.train import load_model, predict_graphs  # noqa: E402
from xanes_utils.workflow import prepare  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ensemble, member = load_model(), load_model(member=0)
    graphs = prepare(get_profile("default"), site_embedding=ensemble.config.site_embedding).subset("test")
    structures = [c.structure() for c in REFERENCE_STRUCTURES.values()]
    n_sites = sum(len(predict(s, model=member)) for s in structures)  # also warms up
    cases = {
        "graphs": (len(graphs), lambda: predict_graphs(member, graphs), lambda: predict_ensemble(ensemble, graphs)),
        "structures": (n_sites, lambda: [predict(s, model=member) for s in structures],
                       lambda: [predict(s, model=ensemble) for s in structures]),
    }
    print(f"Machine: {describe()}; 1 torch thread; {len(ensemble.members)} members\n")
    print("| input | spectra | one member: spectra/s (min / median time) | ensemble: spectra/s (min / median time) "
          "| ensemble / member time |\n|---|---:|---:|---:|---:|")
    for name, (n, one, many) in cases.items():
        t_one, t_many = [], []
        for _ in range(args.repeat):
            t_one.append(timed(one))
            t_many.append(timed(many))
        print(f"| {name} | {n} | {n / min(t_one):.0f} / {n / statistics.median(t_one):.0f} | "
              f"{n / min(t_many):.0f} / {n / statistics.median(t_many):.0f} | "
              f"{statistics.median(t_many) / statistics.median(t_one):.1f} |")


if __name__ == "__main__":
    main()
