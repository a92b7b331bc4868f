"""How accuracy grows with the number of ensemble members, on the internal test split and a real set:

    python benchmarks/ensemble_size.py ENSEMBLE.pt --group 5 [--real ../shared/external/omnixas_cu_dev.jsonl.gz]

The members of ``ENSEMBLE.pt`` (e.g. ``model_options.py --ensemble 10 --save DIR``) are split into consecutive
groups of ``--group`` members (each an ensemble of that size: their spread is the spread of training draws)
and also taken all together. For each, the table gives the internal test split's median MSE and η (the
default profile's split, or ``--data``'s) and, with ``--real``, η on the real set against our training mean
and against the set's own mean (see ``real_materials.py``). Nothing is written to disk but the ignored graph
and site-embedding caches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.ensemble import Ensemble, load_ensemble  # noqa: E402
from xanes_utils.evaluate import evaluation_table, mean_spectra  # noqa: E402
from xanes_utils.profiles import get_profile  # noqa: E402
from xanes_utils.train import predict_graphs, stack_targets  # noqa: E402
from xanes_utils.workflow import prepare  # noqa: E402


def member_groups(n_members: int, group: int) -> list[tuple[str, slice]]:
    """(label, members) of each consecutive group of ``group`` members, then of all ``n_members``."""
    if not 1 <= group <= n_members:
        raise ValueError(f"a group needs 1 to {n_members} members, not {group}")
    groups = [(f"members {i + 1}-{i + group}", slice(i, i + group)) for i in range(0, n_members - group + 1, group)]
    return groups + [(f"all {n_members} members", slice(0, n_members))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ensemble", help="ensemble checkpoint")
    parser.add_argument("--group", type=int, default=5, help="members per group (default 5, the shipped size)")
    parser.add_argument("--real", default=None, help="real-materials JSON-lines file (OmniXAS format)")
    parser.add_argument("--data", default=None, help="dataset of the internal split (default: the embedded one)")
    args = parser.parse_args()
    model, _ = load_ensemble(args.ensemble)
    config = model.config
    prep = prepare(get_profile("default"), args.data, n_neighbours=config.neighbours,
                   site_embedding=config.site_embedding)
    train, test = prep.subset("train"), prep.subset("test")
    baseline = mean_spectra(stack_targets(train), [g.element for g in train])
    real = None
    if args.real:
        from real_materials import RealSet

        real = RealSet(args.real, baseline, n_neighbours=config.neighbours, site_embedding=config.site_embedding)
    print(f"Machine: {describe()}; {args.ensemble}: {len(model.members)} members; internal test split "
          f"{len(test)} spectra" + (f"; real set {len(real.graphs)} sites" if real else "") + "\n")
    print("| members | internal median MSE | internal η | real η (our training mean) | real η (set's own mean) |")
    print("|---|---:|---:|---:|---:|")
    for label, members in member_groups(len(model.members), args.group):
        sub = Ensemble(list(model.members[members])).eval()
        table = evaluation_table(stack_targets(test), predict_graphs(sub, test), [g.element for g in test], baseline)
        mse, eta = table.loc["all", ["mse_median", "eta"]].to_numpy(float)
        real_cells = "– | –"
        if real is not None:
            scores = real.score(predict_graphs(sub, real.graphs))
            real_cells = f"{scores['eta_train_mean']:.2f} | {scores['eta_own_mean']:.2f}"
        print(f"| {label} | {mse:.4f} | {eta:.2f} | {real_cells} |")


if __name__ == "__main__":
    main()
