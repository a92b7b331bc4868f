"""Seconds per training epoch of a run profile on the embedded training split, for the ``xanes_utils`` on the
import path: run it under two checkouts in turn to compare them side by side.

An epoch is what ``train()`` does: every training batch (forward, loss, backward, optimiser step) and the
validation pass. One thread (the profile's), the profile's model preset, batch size and learning rate.

    PYTHONPATH=<checkout> python benchmarks/epoch_time.py [--profile default] [--epochs 5]

Prints one line: wall seconds per epoch (median over the epochs after the first), CPU seconds of the whole
``train()`` call per epoch (one-off set-up such as collation included) and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

import xanes_utils  # noqa: E402
from xanes_utils.model import ModelConfig  # noqa: E402
from xanes_utils.profiles import get_profile  # noqa: E402
from xanes_utils.train import TrainConfig, train  # noqa: E402
from xanes_utils.workflow import prepare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Time ``--epochs`` epochs and print the line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    prep = prepare(profile)
    tr, va = prep.subset("train"), prep.subset("val")
    config = TrainConfig(epochs=args.epochs, batch_size=profile.batch_size, lr=profile.lr, seed=profile.seed)
    cpu = time.process_time()
    _, history = train(tr, va, getattr(ModelConfig, profile.model)(), config, progress=False)
    cpu = time.process_time() - cpu
    per_epoch = np.diff(history.seconds)  # epochs 2.. (the first includes one-off set-up)
    print(f"{Path(xanes_utils.__file__).parent.parent}: {len(tr)} training graphs, profile {profile.name}, "
          f"{statistics.median(per_epoch):.3f} s per epoch (median of {len(per_epoch)}), "
          f"{cpu / args.epochs:.3f} CPU s per epoch (all of train()); load {os.getloadavg()[0]:.2f}; {describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
