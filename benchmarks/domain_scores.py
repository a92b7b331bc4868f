"""Which per-site score ranks an ensemble's errors best, on the internal test split and on a real set:

    python benchmarks/domain_scores.py [--model ENSEMBLE.pt] [--real ../shared/external/omnixas_cu_dev.jsonl.gz]

Candidates (each a number per site; larger should mean a larger error):

* ``domain score``: what the ensemble ships (:func:`xanes_utils.ensemble.domain_scores`: the last hidden
  layer's mean distance to the k nearest training sites of any element, per member, in validation units);
* ``mean σ``: the members' spread averaged over the spectrum;
* ``hidden kNN, same element``: the same distance as the domain score, to training sites of the absorber's
  element only (member-averaged, not normalised);
* ``CHGNet kNN, same element`` / ``any element``: the distance of the absorber's CHGNet site embedding (the
  graphs' ``site_embedding``) to its k nearest training sites;
* ``σ × hidden kNN``: the product of the two.

For each, Spearman's rank correlation with the per-site MSE of the ensemble mean. Nothing is written to disk
but the ignored graph and site-embedding caches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.calibration import rank_correlation  # noqa: E402
from xanes_utils.ensemble import (DEFAULT_ENSEMBLE, Ensemble, K_NEAREST, domain_scores, knn_distance,  # noqa: E402
                                  load_ensemble, member_outputs, mean_std)
from xanes_utils.evaluate import mean_spectra, spectrum_mse  # noqa: E402
from xanes_utils.profiles import get_profile  # noqa: E402
from xanes_utils.train import stack_targets  # noqa: E402
from xanes_utils.workflow import prepare  # noqa: E402


def same_element_knn(query: torch.Tensor, query_elements: Sequence[str], reference: torch.Tensor,
                     reference_elements: Sequence[str], k: int = K_NEAREST) -> np.ndarray:
    """Mean distance [n] of each query row [n, d] to its ``k`` nearest reference rows of the same element."""
    query_elements, reference_elements = np.asarray(query_elements), np.asarray(reference_elements)
    out = np.full(len(query_elements), np.nan)
    for element in np.unique(query_elements):
        rows, refs = np.where(query_elements == element)[0], np.where(reference_elements == element)[0]
        if len(refs):
            out[rows] = knn_distance(query[rows], reference[refs], k).numpy()
    return out


def candidate_scores(model: Ensemble, graphs: Sequence, train: Sequence, train_hidden: torch.Tensor
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(ensemble-mean spectra [n, 111], {candidate: score [n]}) for ``graphs``; ``train_hidden`` [M, n_train, d]
    are the training sites' last hidden layers."""
    members, hidden = member_outputs(model, graphs)
    mu, std = mean_std(members.numpy())
    elements, train_elements = [g.element for g in graphs], [g.element for g in train]
    site = torch.cat([g.site_embedding for g in graphs]).float()
    train_site = torch.cat([g.site_embedding for g in train]).float()
    hidden_same = np.mean([same_element_knn(h, elements, t, train_elements) for h, t in zip(hidden, train_hidden)],
                          axis=0)
    sigma = std.mean(axis=1)
    return mu, {
        "domain score (shipped)": domain_scores(model, hidden),
        "mean σ": sigma,
        "hidden kNN, same element": hidden_same,
        "CHGNet kNN, same element": same_element_knn(site, elements, train_site, train_elements),
        "CHGNet kNN, any element": knn_distance(site, train_site, K_NEAREST).numpy(),
        "σ × hidden kNN": sigma * hidden_same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_ENSEMBLE), help="ensemble checkpoint (default: the shipped one)")
    parser.add_argument("--real", default=None, help="real-materials JSON-lines file (OmniXAS format)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_ensemble(args.model)
    if not model.config.site_embedding:
        raise SystemExit(f"{args.model}: the CHGNet candidates need an ensemble that reads site embeddings")
    prep = prepare(get_profile("default"), None, site_embedding=model.config.site_embedding)
    train, test = prep.subset("train"), prep.subset("test")
    train_hidden = member_outputs(model, train)[1]
    sets = {"internal test split": (test, stack_targets(test))}
    if args.real:
        from real_materials import RealSet

        baseline = mean_spectra(stack_targets(train), [g.element for g in train])
        real = RealSet(args.real, baseline, site_embedding=model.config.site_embedding)
        sets["real set"] = (real.graphs, real.y)
    print(f"Machine: {describe()}; {args.model}\n")
    rows: dict[str, list[str]] = {}
    for graphs, y in sets.values():
        mu, scores = candidate_scores(model, graphs, train, train_hidden)
        mse = spectrum_mse(y, mu)
        for name, score in scores.items():
            rows.setdefault(name, []).append(f"{rank_correlation(score, mse):.2f}")
    print("| score | " + " | ".join(f"Spearman with MSE: {name} ({len(g)} sites)" for name, (g, _) in sets.items())
          + " |\n|---|" + "---:|" * len(sets))
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
