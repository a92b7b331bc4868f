"""Single-element models given the mixed model's full optimiser-step count, not its epoch count.

Notebook 02 trains each single-element model for as many epochs as the mixed model, so the 20 together
cost about as much as the one mixed model. Here each one gets as many steps as the mixed model (about 20×
the compute), to see whether the mixed model still wins when the single models are not step-limited.

    python benchmarks/single_element_steps.py [Cr Y Sc Cu ...] [--profile default]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.elements import ELEMENTS  # noqa: E402
from xanes_utils.evaluate import spectrum_mse  # noqa: E402
from xanes_utils.model import ModelConfig  # noqa: E402
from xanes_utils.profiles import get_profile  # noqa: E402
from xanes_utils.train import TrainConfig, predict_graphs, stack_targets, steps_per_epoch, train  # noqa: E402
from xanes_utils.workflow import prepare, train_or_load  # noqa: E402


def median_mse(model, graphs) -> float:
    return float(np.median(spectrum_mse(stack_targets(graphs), predict_graphs(model, graphs))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("elements", nargs="*", default=list(ELEMENTS))
    parser.add_argument("--profile", default="default")
    args = parser.parse_args()
    profile = get_profile(args.profile)
    prep = prepare(profile, None)
    tr, va, te = prep.subset("train"), prep.subset("val"), prep.subset("test")
    mixed, _ = train_or_load(prep, profile, None, "mixed", progress=False)
    mixed_steps = profile.epochs * steps_per_epoch(len(tr), profile.batch_size)
    print(f"Machine: {describe()}; {len(tr)} training spectra, profile {profile.name}; the mixed model takes "
          f"{mixed_steps:,} optimiser steps\n")
    print("| element | train spectra | test spectra | mixed | single, same epochs | single, same steps | "
          "seconds (same steps) |\n|---|---:|---:|---:|---:|---:|---:|")
    for el in args.elements:
        part = {name: [g for g in graphs if g.element == el] for name, graphs in (("tr", tr), ("va", va), ("te", te))}
        if len(part["tr"]) < 2 or not part["va"] or not part["te"]:
            print(f"| {el} | {len(part['tr'])} | {len(part['te'])} | too few spectra | | | |")
            continue
        same_epochs, _ = train_or_load(prep, profile, None, f"single_{el}", elements=[el],
                                       epochs=profile.single_epochs, progress=False)
        start = time.perf_counter()
        epochs = mixed_steps // steps_per_epoch(len(part["tr"]), profile.batch_size)
        config = TrainConfig(epochs=epochs, batch_size=profile.batch_size, lr=profile.lr, seed=profile.seed)
        same_steps, _ = train(part["tr"], part["va"], getattr(ModelConfig, profile.model)(), config, progress=False)
        print(f"| {el} | {len(part['tr'])} | {len(part['te'])} | {median_mse(mixed, part['te']):.4f} | "
              f"{median_mse(same_epochs, part['te']):.4f} | {median_mse(same_steps, part['te']):.4f} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
