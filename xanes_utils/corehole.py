"""Core-hole transfer: from spectra with FEFF's full core hole (FSR, the dataset's) to the screened one (RPA).

FEFF's core-hole treatment changes a K-edge spectrum systematically: the RPA-screened hole (Lightshow's, so
OmniXAS's) moves the edge and lowers the white line against the full core hole of the final-state rule (the
Materials Project's, so ours). A model trained on FSR spectra predicts FSR spectra; to compare with, or hand
out, RPA spectra, :class:`CoreHoleTransfer` maps an element's FSR spectra to RPA ones. It is a ridge
regression of the difference ``rpa - fsr`` on the FSR spectrum, fitted on pairs of FEFF10 runs of the same
sites of our own structures (``python -m xanes_utils.feff rerun --corehole RPA``), with the ridge strength
chosen by k-fold cross-validation; strength infinity leaves only the mean difference. Transfers are stored
checksummed (:func:`save_transfers`). Command line: ``python -m xanes_utils.corehole`` fits every element with
enough pairs into :data:`DEFAULT_TRANSFERS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from xanes_utils.dataset import finished_record_paths
from xanes_utils.io import CorruptFileError, read_checksummed_json, read_json, write_checksummed_json

log = logging.getLogger(__name__)

#: Ridge strengths tried by :func:`fit_transfer` (``inf``: the mean difference alone).
ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, float("inf"))
#: Format tag of the saved transfers.
FORMAT = "xanes-corehole-transfer/1"
#: Where the fitted transfers are kept (``python -m xanes_utils.corehole`` writes them).
DEFAULT_TRANSFERS = Path(__file__).resolve().parent.parent / "data" / "models" / "corehole_transfer.json"


@dataclass
class CoreHoleTransfer:
    """``rpa ≈ fsr + (fsr - centre) @ weight + bias`` for one element (spectra [..., 111] on its grid)."""

    element: str
    centre: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    alpha: float
    n_pairs: int
    cv_mse: float

    def apply(self, fsr: np.ndarray) -> np.ndarray:
        """RPA-like spectra of FSR spectra ``fsr`` [..., 111]."""
        fsr = np.asarray(fsr, float)
        return fsr + (fsr - self.centre) @ self.weight + self.bias


def _fit(fsr: np.ndarray, rpa: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, weight, bias) of the ridge fit of ``rpa - fsr`` on centred ``fsr``."""
    centre = fsr.mean(0)
    diff = rpa - fsr
    bias = diff.mean(0)
    if np.isinf(alpha):
        return centre, np.zeros((fsr.shape[1], fsr.shape[1])), bias
    x = fsr - centre
    weight = np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ (diff - bias))
    return centre, weight, bias


def fit_transfer(element: str, fsr: np.ndarray, rpa: np.ndarray, alphas: Sequence[float] = ALPHAS,
                 folds: int = 5, seed: int = 0) -> CoreHoleTransfer:
    """The transfer of ``element`` fitted on paired spectra ``fsr``, ``rpa`` [n, 111], its ridge strength the
    one of ``alphas`` with the lowest ``folds``-fold cross-validated mean squared error (seeded folds)."""
    fsr, rpa = np.asarray(fsr, float), np.asarray(rpa, float)
    if fsr.shape != rpa.shape or fsr.ndim != 2 or len(fsr) < folds:
        raise ValueError(f"{element}: need at least {folds} pairs of equal shape, got {fsr.shape} and {rpa.shape}")
    fold = np.random.default_rng(seed).permutation(len(fsr)) % folds
    scores = []
    for alpha in alphas:
        err = []
        for k in range(folds):
            centre, weight, bias = _fit(fsr[fold != k], rpa[fold != k], alpha)
            pred = fsr[fold == k] + (fsr[fold == k] - centre) @ weight + bias
            err.append(((pred - rpa[fold == k]) ** 2).mean(1))
        scores.append(float(np.concatenate(err).mean()))
    best = int(np.argmin(scores))
    centre, weight, bias = _fit(fsr, rpa, alphas[best])
    log.info("%s: core-hole transfer on %d pairs, alpha %g, cross-validated MSE %.5f (identity %.5f)", element,
             len(fsr), alphas[best], scores[best], float(((rpa - fsr) ** 2).mean()))
    return CoreHoleTransfer(element, centre, weight, bias, float(alphas[best]), len(fsr), scores[best])


def transfer_spectra(transfers: dict[str, CoreHoleTransfer], spectra: np.ndarray, elements: Sequence[str]
                     ) -> np.ndarray:
    """``spectra`` [n, 111] of absorbers ``elements`` mapped by their element's transfer."""
    missing = sorted(set(elements) - set(transfers))
    if missing:
        raise KeyError(f"no core-hole transfer for {', '.join(missing)} "
                       f"(transfers exist for {', '.join(sorted(transfers))})")
    out = np.array(spectra, float)
    elements = np.asarray(elements)
    for element in set(elements.tolist()):
        out[elements == element] = transfers[element].apply(out[elements == element])
    return out


def paired_spectra(fsr_runs: str | Path, rpa_runs: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Per element, (fsr [n, 111], rpa [n, 111], ids) of the spectra finished in both run directories."""
    fsr_paths = {p.name: p for p in finished_record_paths(fsr_runs)}
    out: dict[str, tuple[list, list, list]] = {}
    for path in finished_record_paths(rpa_runs):
        if path.name not in fsr_paths:
            continue
        rpa, fsr = read_json(path), read_json(fsr_paths[path.name])
        fsr_list, rpa_list, ids = out.setdefault(path.parent.name, ([], [], []))
        fsr_list.append(fsr["y"])
        rpa_list.append(rpa["y"])
        ids.append(rpa["id"])
    return {el: (np.asarray(f, float), np.asarray(r, float), ids) for el, (f, r, ids) in sorted(out.items())}


def save_transfers(path: str | Path, transfers: Sequence[CoreHoleTransfer]) -> None:
    """Write ``transfers`` (one per element) with a SHA-256 checksum."""
    write_checksummed_json(path, {"format": FORMAT, "transfers": [
        {"element": t.element, "centre": t.centre.tolist(), "weight": t.weight.tolist(), "bias": t.bias.tolist(),
         "alpha": t.alpha, "n_pairs": t.n_pairs, "cv_mse": t.cv_mse} for t in transfers]})


def load_transfers(path: str | Path) -> dict[str, CoreHoleTransfer]:
    """The transfers saved at ``path`` by element; a corrupt or foreign file raises :class:`CorruptFileError`."""
    payload = read_checksummed_json(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CorruptFileError(f"{path}: not a core-hole transfer file ({FORMAT})")
    return {t["element"]: CoreHoleTransfer(t["element"], np.asarray(t["centre"]), np.asarray(t["weight"]),
                                           np.asarray(t["bias"]), float(t["alpha"]), int(t["n_pairs"]),
                                           float(t["cv_mse"])) for t in payload["transfers"]}


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m xanes_utils.corehole",
                                     description="fit the FSR -> RPA core-hole transfer of every element with "
                                                 "enough paired FEFF10 runs")
    parser.add_argument("--fsr", default="data/feff_runs", help="records with the full core hole (FSR)")
    parser.add_argument("--rpa", default="data/feff_runs_rpa", help="the same sites with the RPA core hole")
    parser.add_argument("--min-pairs", type=int, default=20, help="skip elements with fewer pairs")
    parser.add_argument("--out", default=str(DEFAULT_TRANSFERS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pairs = paired_spectra(args.fsr, args.rpa)
    transfers = [fit_transfer(el, fsr, rpa) for el, (fsr, rpa, _) in pairs.items() if len(fsr) >= args.min_pairs]
    skipped = {el: len(fsr) for el, (fsr, _, _) in pairs.items() if len(fsr) < args.min_pairs}
    if skipped:
        log.warning("too few pairs, no transfer: %s", skipped)
    if not transfers:
        raise SystemExit(f"no element has {args.min_pairs} pairs under {args.fsr} and {args.rpa}")
    save_transfers(args.out, transfers)
    log.info("%d transfers -> %s", len(transfers), args.out)


if __name__ == "__main__":
    _main()
