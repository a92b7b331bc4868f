"""Compare the two readouts of PAPER.md once: 'local' (absorber + its 20 neighbours) vs 'cell' (absorber +
every atom of the unit cell, the authors' choice), same data, split, seed and budget (default profile).

    python benchmarks/readout_comparison.py [--profile default] [--seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.evaluate import evaluation_table, mean_spectra  # noqa: E402
from xanes_utils.model import ModelConfig  # noqa: E402
from xanes_utils.profiles import get_profile  # noqa: E402
from xanes_utils.train import TrainConfig, predict_graphs, stack_targets, train  # noqa: E402
from xanes_utils.workflow import prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    profile = get_profile(args.profile)
    prep = prepare(profile, None)
    tr, va, te = prep.subset("train"), prep.subset("val"), prep.subset("test")
    baseline = mean_spectra(stack_targets(tr), [g.element for g in tr])
    print(f"Machine: {describe()}; {len(tr)}/{len(va)}/{len(te)} train/val/test spectra, profile "
          f"{profile.name}, {args.seeds} seeds\n")
    print("| readout | test MSE median | flattened R² | η |\n|---|---:|---:|---:|")
    for readout in ("local", "cell"):
        rows = []
        for seed in range(args.seeds):
            config = dataclasses.replace(getattr(ModelConfig, profile.model)(), readout=readout)
            model, _ = train(tr, va, config, TrainConfig(epochs=profile.epochs, batch_size=profile.batch_size,
                                                         lr=profile.lr, seed=seed), progress=False)
            table = evaluation_table(stack_targets(te), predict_graphs(model, te), [g.element for g in te],
                                     baseline)
            rows.append(table.loc["all", ["mse_median", "r2_flat", "eta"]].to_numpy(float))
        mean, std = np.mean(rows, axis=0), np.std(rows, axis=0)
        print(f"| {readout} | {mean[0]:.4f} ± {std[0]:.4f} | {mean[1]:.3f} ± {std[1]:.3f} | "
              f"{mean[2]:.2f} ± {std[2]:.2f} |")


if __name__ == "__main__":
    main()
