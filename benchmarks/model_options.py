"""Compare the values of one ``ModelConfig`` option, same data, split, seeds and budget (default profile):

    python benchmarks/model_options.py readout local cell          # absorber's neighbours vs whole cell
    python benchmarks/model_options.py attention centred paper     # centred vs the paper's tanh score

Reports the test-set median MSE, flattened R², η (mean ± std over seeds) and the mean number of attention
heads whose weights are exactly uniform (a saturated tanh score).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.analysis import attention_table, record_responses, uniform_attention_heads  # noqa: E402
from xanes_utils.evaluate import evaluation_table, mean_spectra  # noqa: E402
from xanes_utils.model import ModelConfig  # noqa: E402
from xanes_utils.profiles import get_profile  # noqa: E402
from xanes_utils.train import TrainConfig, predict_graphs, stack_targets, train  # noqa: E402
from xanes_utils.workflow import prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("option", choices=[f.name for f in dataclasses.fields(ModelConfig)])
    parser.add_argument("values", nargs="+")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    profile = get_profile(args.profile)
    prep = prepare(profile, None)
    tr, va, te = prep.subset("train"), prep.subset("val"), prep.subset("test")
    baseline = mean_spectra(stack_targets(tr), [g.element for g in tr])
    print(f"Machine: {describe()}; {len(tr)}/{len(va)}/{len(te)} train/val/test spectra, profile "
          f"{profile.name}, {args.seeds} seeds\n")
    print(f"| {args.option} | test MSE median | flattened R² | η | uniform heads |\n|---|---:|---:|---:|---:|")
    for value in args.values:
        rows = []
        for seed in range(args.seeds):
            config = dataclasses.replace(getattr(ModelConfig, profile.model)(), **{args.option: value})
            model, _ = train(tr, va, config, TrainConfig(epochs=profile.epochs, batch_size=profile.batch_size,
                                                         lr=profile.lr, seed=seed), progress=False)
            table = evaluation_table(stack_targets(te), predict_graphs(model, te), [g.element for g in te],
                                     baseline)
            _, attention = record_responses(model, prep.graphs)
            uniform = len(uniform_attention_heads(attention_table(attention, prep.graphs)))
            rows.append([*table.loc["all", ["mse_median", "r2_flat", "eta"]].to_numpy(float), uniform])
        mean, std = np.mean(rows, axis=0), np.std(rows, axis=0)
        print(f"| {value} | {mean[0]:.4f} ± {std[0]:.4f} | {mean[1]:.3f} ± {std[1]:.3f} | "
              f"{mean[2]:.2f} ± {std[2]:.2f} | {mean[3]:.1f} of {config.heads} |")


if __name__ == "__main__":
    main()
