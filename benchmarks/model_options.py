"""Compare ``ModelConfig`` variants on the same data, split, seeds and budget (default profile):

    python benchmarks/model_options.py readout=local readout=cell          # neighbours vs whole cell
    python benchmarks/model_options.py attention=centred attention=paper   # centred vs the paper's score
    python benchmarks/model_options.py - angular=True neighbours=32 angular=True,neighbours=32 \\
        --real ../shared/external/omnixas_cu_dev.jsonl.gz --jobs 2

A variant is ``-`` (the profile's model as it is) or comma-separated ``option=value`` overrides. Reports
the internal test split's median MSE, flattened R², η (mean ± std over seeds) and the mean number of
attention heads whose weights are exactly uniform; with ``--real`` also η on a real-materials set (see
``real_materials.py``, against our training mean and the set's own mean; with ``--transfer FILE`` also with the
predictions and our training mean mapped to the reference's RPA core hole). ``--jobs`` trains variants
and seeds in parallel processes (one thread each); ``--save DIR`` keeps every checkpoint. ``--ensemble N``
trains, per variant and seed, an N-member bootstrap ensemble (the recipe ``predict`` ships; seed s gives
members the seeds ``N * s + 1`` to ``N * s + N``, so seed 0 is the shipped recipe) instead of one network;
the attention analysis is then skipped. ``--balanced`` draws the ensemble's bootstrap resamples with
:func:`xanes_utils.sampling.family_weights` (near-duplicate substitutions count less, a relaxed structure
replaces its unrelaxed parent).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.model import ModelConfig  # noqa: E402
from xanes_utils.profiles import get_profile  # noqa: E402


def parse_variant(text: str, base: ModelConfig) -> ModelConfig:
    """``base`` with the overrides of ``text`` (``-`` or ``opt=value,opt=value``), values typed as in base."""
    if text == "-":
        return base
    overrides = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if not hasattr(base, key):
            raise SystemExit(f"unknown ModelConfig option {key!r} in variant {text!r}")
        current = getattr(base, key)
        if isinstance(current, bool):
            overrides[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(current, int):
            overrides[key] = int(value)
        elif isinstance(current, float):
            overrides[key] = float(value)
        else:
            overrides[key] = value
    return dataclasses.replace(base, **overrides)


def run_one(profile_name: str, config: ModelConfig, seed: int, real_path: str | None,
            save: str | None, tag: str, data: str | None = None, ensemble: int = 0, epochs: int = 0,
            member_jobs: int = 1, balanced: bool = False, transfer: str | None = None) -> list[float]:
    """Train one seed of one variant (an ``ensemble``-member ensemble if > 0, its members ``member_jobs`` at a
    time, resampled with family weights if ``balanced``; ``epochs`` > 0 overrides the profile's); return
    [test MSE, R², η, uniform heads (NaN for an ensemble), real η (2), real Pearson r, real η mapped to RPA
    with the core-hole ``transfer`` file (if given)]."""
    import torch

    from xanes_utils.ensemble import save_ensemble, train_ensemble

    from xanes_utils.analysis import attention_table, record_responses, uniform_attention_heads
    from xanes_utils.evaluate import evaluation_table, mean_spectra
    from xanes_utils.sampling import family_weights
    from xanes_utils.train import TrainConfig, predict_graphs, save_checkpoint, stack_targets, train
    from xanes_utils.workflow import prepare

    torch.set_num_threads(1)
    profile = get_profile(profile_name)
    if epochs:
        profile = dataclasses.replace(profile, epochs=epochs)
    prep = prepare(profile, data, n_neighbours=config.neighbours, site_embedding=config.site_embedding)
    tr, va, te = prep.subset("train"), prep.subset("val"), prep.subset("test")
    baseline = mean_spectra(stack_targets(tr), [g.element for g in tr])
    # an ensemble's members take the seeds after train_config.seed: ensemble * seed keeps draws disjoint
    train_config = TrainConfig(epochs=profile.epochs, batch_size=profile.batch_size, lr=profile.lr,
                               seed=ensemble * seed if ensemble else seed)
    if ensemble:
        weights = family_weights([prep.records[i] for i in prep.train]) if balanced else None
        model, _ = train_ensemble(tr, va, config, train_config, n_members=ensemble, jobs=member_jobs, progress=False,
                                  weights=weights)
        if save:
            save_ensemble(Path(save) / f"{tag}-ensemble{seed}.pt", model, {"data": data, "seed": seed})
    else:
        model, history = train(tr, va, config, train_config, progress=False)
        if save:
            save_checkpoint(Path(save) / f"{tag}-seed{seed}.pt", model, train_config, history=history)
    table = evaluation_table(stack_targets(te), predict_graphs(model, te), [g.element for g in te], baseline)
    row = [*table.loc["all", ["mse_median", "r2_flat", "eta"]].to_numpy(float)]
    uniform = float("nan") if ensemble else 0
    if config.neighbours == 20 and not ensemble:  # the attention analysis is defined on the paper's 20 slots
        _, attention = record_responses(model, prep.graphs)
        uniform = len(uniform_attention_heads(attention_table(attention, prep.graphs)))
    row.append(uniform)
    if real_path:
        from real_materials import RealSet

        real = RealSet(real_path, baseline, n_neighbours=config.neighbours, site_embedding=config.site_embedding)
        pred = predict_graphs(model, real.graphs)
        scores = real.score(pred)
        row += [scores["eta_train_mean"], scores["eta_own_mean"], scores["pearson_median"]]
        if transfer:
            from real_materials import rpa_set

            from xanes_utils.corehole import load_transfers, transfer_spectra

            transfers = load_transfers(transfer)
            rpa = rpa_set(real_path, baseline, transfers, config.neighbours, config.site_embedding)
            row.append(rpa.score(transfer_spectra(transfers, pred, rpa.elements))["eta_train_mean"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one (default 0)")
    parser.add_argument("--real", default=None, help="real-materials JSON-lines file (OmniXAS format)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel training processes")
    parser.add_argument("--save", default=None, help="directory for the checkpoints")
    parser.add_argument("--data", default=None, help="dataset to train and test on (default: the embedded one)")
    parser.add_argument("--ensemble", type=int, default=0, metavar="N",
                        help="train an N-member bootstrap ensemble per variant and seed (0: single networks)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs per network (default: the profile's)")
    parser.add_argument("--transfer", default=None, metavar="FILE",
                        help="with --real: also score the real set with predictions and our training mean mapped to "
                             "RPA by this core-hole transfer (xanes_utils.corehole)")
    parser.add_argument("--balanced", action="store_true",
                        help="ensembles: bootstrap resamples drawn with family weights (xanes_utils.sampling)")
    args = parser.parse_args()
    profile = get_profile(args.profile)
    base = getattr(ModelConfig, profile.model)()
    configs = [parse_variant(v, base) for v in args.variants]
    # seed-major order: an interrupted run still has every variant's first seeds
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    grid = [(seed, i, c) for seed in seeds for i, c in enumerate(configs)]
    member_jobs = args.jobs if len(grid) == 1 else 1  # one ensemble: its members train in parallel instead
    tasks = [(profile.name, c, seed, args.real, args.save, f"v{i}", args.data, args.ensemble, args.epochs, member_jobs,
              args.balanced, args.transfer) for seed, i, c in grid]
    if len(tasks) == 1:
        done = {(tasks[0][5], tasks[0][2]): run_one(*tasks[0])}
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:  # CUDA-safe
            done = dict(zip([(t[5], t[2]) for t in tasks], pool.map(run_one, *zip(*tasks))))
    results = [done[(f"v{i}", seed)] for i in range(len(configs)) for seed in seeds]
    kind = f"; {args.ensemble}-member ensembles" if args.ensemble else ""
    kind += f"; {args.epochs} epochs" if args.epochs else ""
    kind += "; family-weighted bootstrap" if args.balanced else ""
    print(f"Machine: {describe()}; profile {profile.name}, {args.seeds} seeds from {args.first_seed}, "
          f"{args.jobs} parallel processes; data {args.data or 'embedded'}{kind}\n")
    header = "| variant | test MSE median | flattened R² | η | uniform heads |"
    if args.real:
        header += " real η (our mean) | real η (own mean) | real Pearson r |"
        header += " real η mapped to RPA (our mean) |" if args.transfer else ""
    print(header + "\n|---" + "|---:" * (header.count("|") - 2) + "|")
    for i, (text, config) in enumerate(zip(args.variants, configs)):
        rows = np.array(results[i * args.seeds:(i + 1) * args.seeds], float)
        mean, std = rows.mean(axis=0), rows.std(axis=0)
        cells = [f"{mean[0]:.4f} ± {std[0]:.4f}", f"{mean[1]:.3f} ± {std[1]:.3f}", f"{mean[2]:.2f} ± {std[2]:.2f}",
                 "–" if args.ensemble else f"{mean[3]:.1f} of {config.heads}"]
        cells += [f"{mean[k]:.2f} ± {std[k]:.2f}" for k in range(4, rows.shape[1])]
        print(f"| {text} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
