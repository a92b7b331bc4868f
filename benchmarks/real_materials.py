"""Score models on real Materials Project structures with independently computed spectra (OmniXAS format):

    python benchmarks/real_materials.py --data ../shared/external/omnixas_cu_dev.jsonl.gz
    python benchmarks/real_materials.py --data FILE --model data/models/family_bucket.pt other.pt
    python benchmarks/real_materials.py --data FILE --model data/models/family_bucket_ensemble.pt
    python benchmarks/real_materials.py --data FILE --model seed0.pt seed1.pt seed2.pt --combine

The reference spectra are shifted once, globally, by the offset between their FEFF and our FEFF10 measured
on a few sites (``--calibrate``; model-independent), or so that their mean matches our training mean
(``--shift mean``). OmniXAS's spectra were computed with the RPA core hole, ours with FSR
(:mod:`xanes_utils.corehole`): with ``--transfer FILE`` every prediction and our training mean are first mapped to
RPA, and the default shift is the one calibrated with RPA (``--calibrate N --corehole RPA``). Reports, per model:
median MSE, median Pearson r, η against the mean of our own training spectra (OmniXAS's convention) and against
the real set's own mean, and the per-model best global shift as a diagnostic; plus the first-shell statistics of
the real set. For an ensemble, also the coverage of its uncertainty bands and how well its domain score ranks the
errors. With ``--by-shell``, each model's errors per first shell of the absorber (majority species and size). With
``--combine``, also the plain average of all the models' predictions (an ensemble of separately trained
networks, e.g. the seeds of ``model_options.py --save``). With ``--library RUNS``, our finished FEFF10 records
of the set's element against the set, per first shell (edge energy, bond length, mean spectra), and how
well they span it (the mean of the k of our spectra nearest to each reference, an oracle; and of the k
sites nearest in CHGNet embedding space, a look-up baseline). The data
file is for development only: nothing derived from its structures or spectra is written to disk except
ignored graph and site-embedding caches under ``cache/``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import sys
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.calibration import coverage, rank_correlation  # noqa: E402
from xanes_utils.compounds import first_shell, shell_statistics  # noqa: E402
from xanes_utils.convergence import edge_position  # noqa: E402
from xanes_utils.corehole import load_transfers, transfer_spectra  # noqa: E402
from xanes_utils.ensemble import Ensemble, predict_ensemble  # noqa: E402
from xanes_utils.evaluate import spectrum_mse, spectrum_pearson, mean_spectra  # noqa: E402
from xanes_utils.feff import COREHOLES, DEFAULT_SETTINGS, FeffSettings  # noqa: E402
from xanes_utils.graphs import N_NEIGHBOURS, build_graphs  # noqa: E402
from xanes_utils.omnixas import fit_shift, read_jsonl, to_records  # noqa: E402
from xanes_utils.profiles import ROOT, get_profile  # noqa: E402
from xanes_utils.site_embeddings import attach_site_embeddings, cache_file_name  # noqa: E402
from xanes_utils.train import DEFAULT_MODEL, load_model, predict_graphs, stack_targets  # noqa: E402
from xanes_utils.workflow import prepare  # noqa: E402


#: Global shift (eV) added to the OmniXAS reference energies: measured with ``--calibrate 10 --calibrate-draw
#: smallest`` (our FEFF10 at the dataset's settings on the 10 smallest cells agrees best at -0.9 eV: median MSE
#: 0.0046, r 0.982; 2026-11-27) and confirmed on a seeded random draw of 24 sites (``--calibrate 24``: -1.0 eV,
#: each site's own best shift median -0.9 eV; 2026-11-28). Model-independent, unlike a shift fitted to any
#: model's predictions.
FEFF_SHIFT = -0.9
#: The same with our FEFF10 run with the reference's RPA core hole (``--calibrate 24 --corehole RPA``: +0.3 eV, median
#: MSE 0.0007, r 0.997, against -1.0 eV, 0.0046 and 0.984 with FSR; 2026-11-29).
RPA_SHIFT = 0.3


class RealSet:
    """A real-materials set on our grid: graphs, targets, and the baselines to score against."""

    def __init__(self, path: str | Path, train_mean: dict[str, np.ndarray], shift: float | None = FEFF_SHIFT,
                 n_neighbours: int = N_NEIGHBOURS, site_embedding: int = 0) -> None:
        self.spectra = read_jsonl(path)
        self.shift = fit_shift(self.spectra, train_mean) if shift is None else shift
        self.records = to_records(self.spectra, self.shift)
        self.cache_stem = f"real-{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]}"
        # the targets depend on the shift: one graph cache per shift
        graphs_cache = ROOT / "cache" / f"{self.cache_stem}-shift{self.shift:+.2f}-graphs-{n_neighbours}.pt"
        self.graphs = build_graphs(self.records, graphs_cache,
                                   progress=False, n_neighbours=n_neighbours)
        if site_embedding:
            attach_site_embeddings(self.graphs, self.records, self.embedding_cache(site_embedding), progress=False,
                                   width=site_embedding)
        self.y = stack_targets(self.graphs)
        self.elements = [g.element for g in self.graphs]
        self.train_mean = np.stack([train_mean[el] for el in self.elements])
        own = mean_spectra(self.y, self.elements)
        self.own_mean = np.stack([own[el] for el in self.elements])

    def embedding_cache(self, width: int) -> Path:
        """Cache file of the set's ``width``-wide site embeddings (ignored, under ``cache/``)."""
        return ROOT / "cache" / cache_file_name(f"{self.cache_stem}-site-embeddings", width)

    @cached_property
    def shells(self) -> list[str]:
        """First shell of each site (:func:`shell_key`), computed once."""
        return [shell_key(r.structure, r.site) for r in self.records]

    def score(self, pred: np.ndarray) -> dict[str, float]:
        """Median MSE, Pearson r and the two η of predictions ``pred`` [n, 111]."""
        mse = np.median(spectrum_mse(self.y, pred))
        return {"mse_median": float(mse),
                "pearson_median": float(np.nanmedian(spectrum_pearson(self.y, pred))),
                "eta_train_mean": float(np.median(spectrum_mse(self.y, self.train_mean)) / mse),
                "eta_own_mean": float(np.median(spectrum_mse(self.y, self.own_mean)) / mse)}

    def best_shift(self, pred: np.ndarray, shifts: np.ndarray = np.arange(-3.0, 3.01, 0.25)) -> tuple[float, float]:
        """(extra shift in eV, η against our training mean) of the shift that suits ``pred`` best."""
        best = (0.0, -np.inf)
        for extra in shifts:
            y = np.stack([r.mu for r in to_records(self.spectra, self.shift + extra)])
            eta = np.median(spectrum_mse(y, self.train_mean)) / np.median(spectrum_mse(y, pred))
            best = max(best, (float(extra), float(eta)), key=lambda t: t[1])
        return best


def rpa_mean(train_mean: dict[str, np.ndarray], transfers: dict) -> dict[str, np.ndarray]:
    """Our training mean as the core-hole ``transfers`` (:func:`xanes_utils.corehole.load_transfers`) map it to RPA,
    for the elements they cover."""
    return {el: t.apply(train_mean[el]) for el, t in transfers.items()}


def rpa_set(path: str | Path, train_mean: dict[str, np.ndarray], transfers: dict, n_neighbours: int = N_NEIGHBOURS,
            site_embedding: int = 0) -> RealSet:
    """The set at ``path`` scored as RPA spectra: at the RPA-calibrated shift, against :func:`rpa_mean`; map
    predictions with :func:`xanes_utils.corehole.transfer_spectra` before scoring them."""
    return RealSet(path, rpa_mean(train_mean, transfers), RPA_SHIFT, n_neighbours=n_neighbours,
                   site_embedding=site_embedding)


def calibration_sites(spectra: list, n: int, draw: str = "random", seed: int = 0) -> list:
    """``n`` sites to calibrate on: a seeded uniform draw (``random``: as the set's chemistry is) or the
    ``smallest`` cells (fastest to run, but mostly simple compounds)."""
    if draw == "smallest":
        return sorted(spectra, key=lambda s: len(s.structure_dict["sites"]))[:n]
    if draw != "random":
        raise ValueError(f"draw must be 'random' or 'smallest', not {draw!r}")
    return [spectra[i] for i in np.sort(np.random.default_rng(seed).choice(len(spectra), n, replace=False))]


def calibrate_shift(chosen: list, workers: int = 2, settings: FeffSettings = DEFAULT_SETTINGS) -> None:
    """Run our FEFF10 (``settings``, default the dataset's) on the ``chosen`` sites and print the global shift
    that aligns the reference spectra with it (lowest median MSE), the agreement after it, and each site's own
    best shift (nothing is written to disk). A site whose FEFF run fails is reported and left out."""
    from concurrent.futures import ProcessPoolExecutor

    from pymatgen.core import Structure
    from tqdm import tqdm

    from xanes_utils.feff import compute_spectrum

    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(compute_spectrum, Structure.from_dict(s.structure_dict), s.site, settings, 900.0)
                   for s in chosen]
        ours, kept = [], []
        for s, future in zip(chosen, tqdm(futures, desc="FEFF10 calibration")):
            try:
                ours.append(future.result()["y"])
                kept.append(s)
            except Exception as exc:  # noqa: BLE001 - a failed site is reported, the others still count
                print(f"calibration: {s.material} site {s.site} failed: {exc}")
    y_ours = np.array(ours)
    shifts = np.round(np.arange(-4.0, 4.01, 0.1), 1)
    mse = np.array([spectrum_mse(np.stack([r.mu for r in to_records(kept, shift)]), y_ours) for shift in shifts])
    best = int(np.argmin(np.median(mse, axis=1)))
    y_ref = np.stack([r.mu for r in to_records(kept, shifts[best])])
    own = shifts[np.argmin(mse, axis=0)]
    q10, q50, q90 = np.percentile(own, [10, 50, 90])
    print(f"FEFF10 (core hole {settings.corehole}) on {len(kept)} sites: best global shift {shifts[best]:+.1f} eV, "
          f"median MSE {np.median(mse[best]):.4f}, median Pearson r {np.median(spectrum_pearson(y_ref, y_ours)):.3f}; "
          f"each site's own best shift: median {q50:+.1f} eV, 10-90 % {q10:+.1f} to {q90:+.1f} eV")
    for s, shift, m in zip(kept, own, mse[best]):
        shell = first_shell(Structure.from_dict(s.structure_dict), s.site)
        print(f"  {s.material} site {s.site} ({''.join(sorted(set(shell)))}{len(shell)}): own shift "
              f"{shift:+.1f} eV, MSE at the global shift {m:.4f}")


def uncertainty_row(name: str, model: Ensemble, real: RealSet) -> str:
    """Markdown row for an ensemble: coverage of the ±1/2/3σ bands, share flagged out of domain, and the
    Spearman correlation of the per-site error with the domain score and with the mean σ."""
    result = predict_ensemble(model, real.graphs)
    cover = coverage(real.y, result.mu, result.mu_std)
    mse = spectrum_mse(real.y, result.mu)
    return (f"| {name} | {100 * cover[1.0]:.1f} | {100 * cover[2.0]:.1f} | {100 * cover[3.0]:.1f} | "
            f"{100 * result.out_of_domain.mean():.1f} | {rank_correlation(result.score, mse):.2f} | "
            f"{rank_correlation(result.mu_std.mean(axis=1), mse):.2f} |")


def score_row(name: str, real: RealSet, pred: np.ndarray) -> str:
    """Markdown row: median MSE, median Pearson r, both η and the best extra shift of ``pred``."""
    s = real.score(pred)
    extra, eta = real.best_shift(pred)
    return (f"| {name} | {s['mse_median']:.4f} | {s['pearson_median']:.3f} | {s['eta_train_mean']:.2f} | "
            f"{s['eta_own_mean']:.2f} | {extra:+.2f} eV, {eta:.2f} |")


def shell_rows(real: RealSet, pred: np.ndarray, top: int = 8) -> str:
    """Markdown table of ``pred``'s errors per first shell (majority species and size, e.g. O4), the ``top``
    most common shells of the set: sites, median MSE of the model and of our training mean, both η, and the
    median of the model's half-step edge position minus the reference's (eV; > 0: predicted edges too high)."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(real.shells):
        groups.setdefault(key, []).append(i)
    model, base, own = (spectrum_mse(real.y, p) for p in (pred, real.train_mean, real.own_mean))
    offset = np.array([edge_position(r.energy, p) - edge_position(r.energy, y)
                       for r, p, y in zip(real.records, pred, real.y)])
    lines = ["| first shell | sites | model median MSE | training-mean median MSE | η (our training mean) "
             "| η (set's own mean) | edge offset (eV) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key, idx in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:top]:
        m = np.median(model[idx])
        lines.append(f"| {key} | {len(idx)} | {m:.4f} | {np.median(base[idx]):.4f} | {np.median(base[idx]) / m:.2f} | "
                     f"{np.median(own[idx]) / m:.2f} | {np.median(offset[idx]):+.2f} |")
    return "\n".join(lines)


def shell_key(structure, site: int) -> str:
    """First shell as majority species and size (e.g. ``O4``; a tie: the first species by name)."""
    shell = first_shell(structure, site)
    majority = max(sorted(set(shell)), key=shell.count) if shell else "none"
    return f"{majority}{len(shell)}"


class Site(NamedTuple):
    """One absorbing site summarised: first shell key, half-step edge (eV), mean first-shell bond (Å), μ."""

    shell: str
    edge: float
    bond: float
    mu: np.ndarray
    structure: Any
    site: int


def site_summary(structure, site: int, energy: np.ndarray, mu: np.ndarray, shell: str | None = None) -> Site:
    """First shell key (``shell`` when already known), half-step edge energy, mean first-shell bond length
    and spectrum of one site."""
    from xanes_utils.structures import first_shell_neighbours

    bond = float(np.mean([nb.nn_distance for nb in first_shell_neighbours(structure, site)]))
    return Site(shell or shell_key(structure, site), edge_position(energy, mu), bond, mu, structure, site)


def library_sites(real: RealSet, runs: str | Path) -> list[Site]:
    """Our finished FEFF10 records under ``runs`` of the set's element(s), summarised per site."""
    from pymatgen.core import Structure

    from xanes_utils.dataset import finished_record_paths
    from xanes_utils.io import read_json

    elements = set(real.elements)
    return [site_summary(Structure.from_dict(rec["structure"]), rec["absorbing_index"], np.array(rec["x"]),
                         np.array(rec["y"]))
            for rec in (read_json(p) for p in finished_record_paths(runs) if p.parent.name in elements)]


def library_rows(real: RealSet, ours: list[Site], top: int = 6) -> str:
    """Markdown table comparing, per first shell (the ``top`` most common of the real set), our sites ``ours``
    (:func:`library_sites`) with the real set: sites, median half-step edge energy, median first-shell bond
    length, the MSE between the two mean spectra, and each site's median MSE to the real shell's mean (ours,
    and the real sites' own spread)."""
    theirs = [site_summary(r.structure, r.site, r.energy, y, key)
              for r, y, key in zip(real.records, real.y, real.shells)]
    lines = ["| first shell | sites (ours / real) | edge, ours / real (eV) | bond, ours / real (Å) | MSE of the means "
             "| median MSE to the real mean: ours / real sites |", "|---|---:|---:|---:|---:|---:|"]
    for key, _ in collections.Counter(t.shell for t in theirs).most_common(top):
        a = [t for t in ours if t.shell == key]
        b = [t for t in theirs if t.shell == key]
        mean_b = np.mean([t.mu for t in b], axis=0)
        spread_b = np.median([np.mean((t.mu - mean_b) ** 2) for t in b])
        if not a:
            lines.append(f"| {key} | 0 / {len(b)} | – / {np.median([t.edge for t in b]):.1f} | – / "
                         f"{np.median([t.bond for t in b]):.3f} | – | – / {spread_b:.4f} |")
            continue
        mean_a = np.mean([t.mu for t in a], axis=0)
        lines.append(f"| {key} | {len(a)} / {len(b)} | {np.median([t.edge for t in a]):.1f} / "
                     f"{np.median([t.edge for t in b]):.1f} | {np.median([t.bond for t in a]):.3f} / "
                     f"{np.median([t.bond for t in b]):.3f} | {np.mean((mean_a - mean_b) ** 2):.4f} | "
                     f"{np.median([np.mean((t.mu - mean_b) ** 2) for t in a]):.4f} / {spread_b:.4f} |")
    return "\n".join(lines)


def coverage_rows(real: RealSet, ours: list[Site], ks: tuple[int, ...] = (1, 3), top: int = 4) -> str:
    """Markdown table of how well our spectra span the real ones and how far a plain look-up gets.

    Oracle rows: for each real site, the mean of the ``k`` library spectra closest to its reference (it looks at
    the answer: what a model that chose well among our spectra would reach). Embedding rows: the mean of the
    ``k`` library sites nearest to the real site in standardised CHGNet site-embedding space (a nearest-neighbour
    baseline that sees only structures). Median MSE and η against our training mean, overall and for the
    ``top`` most common first shells.
    """
    from xanes_utils.site_embeddings import SITE_EMBEDDING_DIM, site_embeddings

    library = np.stack([t.mu for t in ours])
    oracle = np.argsort(((real.y[:, None, :] - library[None]) ** 2).mean(-1), axis=1)
    theirs_emb = site_embeddings(real.records, real.embedding_cache(SITE_EMBEDDING_DIM), progress=False).numpy()
    ours_emb = site_embeddings(ours, progress=False).numpy()
    centre, scale = ours_emb.mean(0), ours_emb.std(0) + 1e-6
    a, b = (theirs_emb - centre) / scale, (ours_emb - centre) / scale
    embedded = np.argsort(((a[:, None, :] - b[None]) ** 2).sum(-1), axis=1)
    base = spectrum_mse(real.y, real.train_mean)
    keys = np.array(real.shells)
    groups = [("all", np.arange(len(keys)))] + [(key, np.flatnonzero(keys == key))
                                                 for key, _ in collections.Counter(keys).most_common(top)]
    lines = ["| nearest of ours | k | " + " | ".join(f"{key} ({len(idx)} sites): median MSE, η" for key, idx in groups)
             + " |", "|---|---:|" + "---:|" * len(groups)]
    for name, order in (("to the reference spectrum (oracle)", oracle), ("in CHGNet embedding space", embedded)):
        for k in ks:
            mse = spectrum_mse(real.y, library[order[:, :k]].mean(1))
            cells = (f"{np.median(mse[i]):.4f}, {np.median(base[i]) / np.median(mse[i]):.2f}" for _, i in groups)
            lines.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_mean(profile_name: str = "default") -> dict[str, np.ndarray]:
    """Mean spectrum per element of the embedded data's training split (the η baseline)."""
    prep = prepare(get_profile(profile_name), None)
    tr = prep.subset("train")
    return mean_spectra(stack_targets(tr), [g.element for g in tr])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="JSON-lines file of real-structure spectra")
    parser.add_argument("--model", nargs="+", default=[str(DEFAULT_MODEL)], help="checkpoints to score")
    parser.add_argument("--shift", default=None,
                        help="global shift (eV) added to the reference energies, or 'mean' to fit it to our "
                             f"training mean (default: the FEFF-calibrated {FEFF_SHIFT}, with --transfer {RPA_SHIFT})")
    parser.add_argument("--combine", action="store_true", help="also score the average of all models' predictions")
    parser.add_argument("--by-shell", action="store_true",
                        help="also break each model's errors down by the absorber's first shell")
    parser.add_argument("--library", default=None, metavar="RUNS",
                        help="also compare our finished FEFF10 records under RUNS (e.g. data/feff_runs) of the set's "
                             "element with the set, per first shell")
    parser.add_argument("--calibrate", type=int, default=0, metavar="N",
                        help="first run our FEFF10 on N sites and print the shift that aligns them")
    parser.add_argument("--calibrate-draw", choices=("random", "smallest"), default="random",
                        help="calibration sites: a seeded uniform draw, or the smallest cells")
    parser.add_argument("--calibrate-seed", type=int, default=0)
    parser.add_argument("--calibrate-workers", type=int, default=1, help="FEFF processes for the calibration")
    parser.add_argument("--calibrate-only", action="store_true", help="stop after the calibration")
    parser.add_argument("--corehole", choices=COREHOLES, default="FSR",
                        help="core hole of the calibration's FEFF10 runs (the dataset's: FSR)")
    parser.add_argument("--transfer", default=None, metavar="FILE",
                        help="core-hole transfer (xanes_utils.corehole) applied to every prediction and to the "
                             "training mean before scoring (the default shift is then the RPA-calibrated one)")
    args = parser.parse_args()
    if args.calibrate:
        chosen = calibration_sites(read_jsonl(args.data), args.calibrate, args.calibrate_draw, args.calibrate_seed)
        calibrate_shift(chosen, workers=args.calibrate_workers,
                        settings=dataclasses.replace(DEFAULT_SETTINGS, corehole=args.corehole))
        if args.calibrate_only:
            return
    shift = args.shift or str(RPA_SHIFT if args.transfer else FEFF_SHIFT)
    mean = training_mean()
    transfers = load_transfers(args.transfer) if args.transfer else None
    if transfers:  # the baseline is our training mean as the transfer sees it
        mean = rpa_mean(mean, transfers)
    sets: dict[tuple[int, int], RealSet] = {}
    bands: list[str] = []
    shells: list[str] = []
    preds: list[np.ndarray] = []
    for i, path in enumerate(args.model):
        model = load_model(path)
        kind = (model.config.neighbours, model.config.site_embedding)
        if kind not in sets:
            sets[kind] = RealSet(args.data, mean, None if shift == "mean" else float(shift),
                                 n_neighbours=kind[0], site_embedding=kind[1])
        real = sets[kind]
        if i == 0:
            print(f"Machine: {describe()}; {len(real.records)} sites of {len({r.material_id for r in real.records})} "
                  f"materials; global shift {real.shift:+.1f} eV; first shells: "
                  f"{shell_statistics((r.structure, r.site) for r in real.records).summary(n_species=6)}\n")
            print("| model | median MSE | median Pearson r | η (our training mean) | η (set's own mean) "
                  "| best extra shift, η |\n|---|---:|---:|---:|---:|---:|")
        preds.append(predict_graphs(model, real.graphs))
        if transfers:
            preds[-1] = transfer_spectra(transfers, preds[-1], real.elements)
        print(score_row(path, real, preds[-1]))
        if isinstance(model, Ensemble) and not transfers:  # the bands are the FSR predictions'
            bands.append(uncertainty_row(path, model, real))
        if args.by_shell:
            shells.append(f"\n{path}, per first shell:\n\n{shell_rows(real, preds[-1])}")
    if args.combine:
        print(score_row(f"average of the {len(preds)} models", real, np.mean(preds, axis=0)))
    if bands:
        print("\n| ensemble | points within ±1σ (%) | ±2σ (%) | ±3σ (%) | sites flagged out of domain (%) "
              "| Spearman(domain score, MSE) | Spearman(mean σ, MSE) |\n|---|---:|---:|---:|---:|---:|---:|")
        print("\n".join(bands))
    print("\n".join(shells))
    if args.library:
        ours = library_sites(real, args.library)
        print(f"\nOur {len(ours)} finished records under {args.library} against the set, per first shell:\n\n"
              f"{library_rows(real, ours)}\n\nNearest of ours to each real site:\n\n{coverage_rows(real, ours)}")


if __name__ == "__main__":
    main()
