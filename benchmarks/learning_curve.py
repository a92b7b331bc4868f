"""Learning curve: internal and real-materials accuracy against training spectra and FEFF core-hours.

    python -m xanes_utils.feff pack --runs data/feff_runs --out /tmp/records.json.gz
    python benchmarks/learning_curve.py --data /tmp/records.json.gz \\
        --real ../shared/external/omnixas_cu_dev.jsonl.gz --transfer data/models/corehole_transfer.json --jobs 2

One split of ``--data`` (the profile's: grouped by material, a relaxed structure with its parent), then nested
seeded random subsets of its training split (``--fractions``), and the subset of the training split that is in
the embedded dataset (``embedded``: what the records finished since add, on the same test split). Each subset
trains ``--seeds`` single networks of the profile's model (the paper's inputs; the validation split is the
full one). Scores: η on the internal test split against the full training split's mean spectra (one
baseline for every row), and with ``--real`` η on a real-materials set against the embedded training mean
(as in ``real_materials.py``), with FSR predictions and, with ``--transfer``, with predictions and baseline
mapped to the reference's RPA core hole. Core-hours: the FEFF seconds of the subset's spectra as recorded
(relaxations not included). Rows are printed as a Markdown table, mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.dataset import DEFAULT_DATASET, load_dataset  # noqa: E402
from xanes_utils.io import read_json  # noqa: E402
from xanes_utils.profiles import get_profile  # noqa: E402


def subsets(train: list[int], ids: list[str], embedded: set[str], fractions: list[float], seed: int = 0
            ) -> dict[str, list[int]]:
    """Training subsets by name: ``embedded`` (records of ``train`` whose id is in ``embedded``) and, per
    fraction, the first ``fraction`` of one seeded permutation of ``train`` (so the subsets are nested)."""
    order = np.random.default_rng(seed).permutation(train)
    out = {"embedded": [i for i in train if ids[i] in embedded]}
    out |= {f"{fraction:g}": sorted(order[:max(1, round(fraction * len(train)))].tolist()) for fraction in fractions}
    return out


def run_one(profile_name: str, data: str, indices: list[int], seed: int, real_path: str | None,
            real_mean: dict[str, np.ndarray], epochs: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Train one network on the training graphs ``indices`` of ``data``; its predictions on the test split and
    on the real set at ``real_path`` (whose η baseline is ``real_mean``), or None."""
    import torch

    from xanes_utils.model import ModelConfig
    from xanes_utils.train import TrainConfig, predict_graphs, train
    from xanes_utils.workflow import prepare

    torch.set_num_threads(1)
    profile = get_profile(profile_name)
    prep = prepare(profile, data)
    config = getattr(ModelConfig, profile.model)()
    model, _ = train([prep.graphs[i] for i in indices], prep.subset("val"), config,
                     TrainConfig(epochs=epochs or profile.epochs, batch_size=profile.batch_size, lr=profile.lr,
                                 seed=seed), progress=False)
    test = predict_graphs(model, prep.subset("test"))
    real = None
    if real_path:
        from real_materials import FEFF_SHIFT, RealSet

        real = predict_graphs(model, RealSet(real_path, real_mean, FEFF_SHIFT).graphs)
    return test, real


def mean_std(values: list[float]) -> str:
    """``mean ± std`` of ``values`` (population std; one value: just the value)."""
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="packed dataset (python -m xanes_utils.feff pack --out FILE)")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                        help="shares of the training split (default 0.25 0.5 1)")
    parser.add_argument("--seeds", type=int, default=3, help="networks per subset (seeds 0..N-1; default 3)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs per network (default: the profile's)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel training processes (one thread each)")
    parser.add_argument("--real", default=None, help="real-materials JSON-lines file (OmniXAS format)")
    parser.add_argument("--transfer", default=None, metavar="FILE",
                        help="core-hole transfer: also score the real set with predictions mapped to RPA")
    args = parser.parse_args()

    from xanes_utils.corehole import load_transfers, transfer_spectra
    from xanes_utils.evaluate import evaluation_table, mean_spectra
    from xanes_utils.train import stack_targets
    from xanes_utils.workflow import prepare

    profile = get_profile(args.profile)
    prep = prepare(profile, args.data)  # builds the graph cache the workers read
    ids = [r.id for r in prep.records]
    seconds = {r["id"]: r["seconds"] for r in read_json(args.data)["records"]}
    embedded = {r.id for r in load_dataset(DEFAULT_DATASET)}
    parts = subsets(prep.train, ids, embedded, args.fractions)
    tr = prep.subset("train")
    baseline = mean_spectra(stack_targets(tr), [g.element for g in tr])
    te = prep.subset("test")
    y_test, test_elements = stack_targets(te), [g.element for g in te]
    real = rpa = transfers = None
    embedded_mean: dict[str, np.ndarray] = {}
    if args.real:
        from real_materials import FEFF_SHIFT, RealSet, rpa_set, training_mean

        embedded_mean = training_mean(args.profile)
        real = RealSet(args.real, embedded_mean, FEFF_SHIFT)
        if args.transfer:
            transfers = load_transfers(args.transfer)
            rpa = rpa_set(args.real, embedded_mean, transfers)
    tasks = [(name, seed) for name in parts for seed in range(args.seeds)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = {task: pool.submit(run_one, args.profile, args.data, parts[task[0]], task[1], args.real,
                                     embedded_mean, args.epochs) for task in tasks}
        results = {task: future.result() for task, future in futures.items()}

    print(f"Machine: {describe()}\n{len(prep.records)} spectra in {args.data}: train {len(prep.train)}, "
          f"val {len(prep.val)}, test {len(prep.test)}; profile {args.profile}, seeds 0-{args.seeds - 1}\n")
    head = "| training subset | spectra | Cu spectra | FEFF core-hours | internal test η |"
    rule = "|---|---:|---:|---:|---:|"
    if real is not None:
        head += " real Cu η (FSR) | real Pearson r |"
        rule += "---:|---:|"
    if rpa is not None:
        head += " real Cu η (mapped to RPA) |"
        rule += "---:|"
    print(f"{head}\n{rule}")
    for name, indices in parts.items():
        runs = [results[(name, seed)] for seed in range(args.seeds)]
        internal = [evaluation_table(y_test, test, test_elements, baseline).loc["all", "eta"] for test, _ in runs]
        hours = sum(seconds[ids[i]] for i in indices) / 3600
        n_cu = sum(prep.records[i].element == "Cu" for i in indices)
        row = f"| {name} | {len(indices):,} | {n_cu} | {hours:.1f} | {mean_std(internal)} |"
        if real is not None:
            scores = [real.score(pred) for _, pred in runs]
            row += (f" {mean_std([s['eta_train_mean'] for s in scores])} |"
                    f" {np.mean([s['pearson_median'] for s in scores]):.3f} |")
        if rpa is not None:
            mapped = [rpa.score(transfer_spectra(transfers, pred, rpa.elements))["eta_train_mean"] for _, pred in runs]
            row += f" {mean_std(mapped)} |"
        print(row)


if __name__ == "__main__":
    main()
