"""Measured K-edge XANES of reference oxides, their published crystal structures, and the comparison.

The measured spectra are XASLIB data shipped in the PyPI package ``maml-apps-rfxas`` (``experiment.csv``
in the installed ``maml/apps/rfxas/`` folder; 200 points each, min-max normalised by its authors). Their
crystal structures are built here from published crystallographic data (:data:`REFERENCE_STRUCTURES`:
space group, lattice and Wyckoff positions, each with its source); compounds without a reliable ordered
structure are listed in :data:`SKIPPED` with the reason.

Comparison (:func:`compare`): every curve (experiment, FEFF10 at the dataset's settings, model, and the
element's mean training spectrum as a trivial baseline) is put on
the element's 111-point grid and min-max normalised on the window it shares with the shifted experiment.
The experiment's energy scale is moved by one shift per element, fitted (best MSE of FEFF against
experiment) on the element's other compounds only (leave-one-out); an element with a single compound
takes the median of the other elements' shifts. The per-spectrum best shift is kept as a diagnostic.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure
from scipy.stats import spearmanr

from xanes_utils.elements import ELEMENTS, energy_grid

log = logging.getLogger(__name__)

#: Shifts (eV) tried when aligning experiment with FEFF.
SHIFTS = np.arange(-25.0, 25.01, 0.25)


@dataclass(frozen=True)
class Crystal:
    """A published crystal structure: space group, lattice (Å, degrees), Wyckoff positions, source."""

    spacegroup: str
    lattice: tuple[float, float, float, float, float, float]
    species: tuple[str, ...]
    coords: tuple[tuple[float, float, float], ...]
    source: str

    def structure(self) -> Structure:
        """The full cell, from the asymmetric unit by the space group's operations."""
        return Structure.from_spacegroup(self.spacegroup, Lattice.from_parameters(*self.lattice),
                                         list(self.species), [list(c) for c in self.coords])


def _rocksalt(a: float, metal: str, source: str) -> Crystal:
    return Crystal("Fm-3m", (a, a, a, 90, 90, 90), (metal, "O"), ((0, 0, 0), (0.5, 0.5, 0.5)), source)


def _corundum(a: float, c: float, metal: str, z: float, x: float, source: str) -> Crystal:
    return Crystal("R-3c", (a, a, c, 90, 90, 120), (metal, "O"), ((0, 0, z), (x, 0, 0.25)), source)


def _layered(a: float, c: float, metal: str, z: float, source: str) -> Crystal:
    """alpha-NaFeO2 type with Li on 3a (0, 0, 0), the metal on 3b (0, 0, 1/2) and O on 6c (0, 0, z)."""
    return Crystal("R-3m", (a, a, c, 90, 90, 120), (metal, "Li", "O"), ((0, 0, 0.5), (0, 0, 0), (0, 0, z)),
                   source)


#: Published structures of the measured compounds, by reduced formula.
REFERENCE_STRUCTURES: dict[str, Crystal] = {
    "VO": _rocksalt(4.073, "V", "rock salt; a for VO(1.0), Banus, Reed & Strauss, Phys. Rev. B 5, 2775 (1972)"),
    "MnO": _rocksalt(4.4448, "Mn", "rock salt; Sasaki, Fujino & Takeuchi, Proc. Jpn. Acad. 55, 43 (1979)"),
    "FeO": _rocksalt(4.30, "Fe", "rock salt, stoichiometric ordered model of wüstite Fe(1-x)O (a ~ 4.30 A); "
                     "McCammon & Liu, Phys. Chem. Miner. 10, 106 (1984)"),
    "NiO": _rocksalt(4.1771, "Ni", "rock salt; Sasaki, Fujino & Takeuchi, Proc. Jpn. Acad. 55, 43 (1979)"),
    "CdO": _rocksalt(4.6953, "Cd", "rock salt; Wyckoff, Crystal Structures vol. 1 (1963)"),
    "ZnO": Crystal("P6_3mc", (3.2496, 3.2496, 5.2042, 90, 90, 120), ("Zn", "O"),
                   ((1 / 3, 2 / 3, 0), (1 / 3, 2 / 3, 0.3819)),
                   "wurtzite; Kisi & Elcombe, Acta Cryst. C 45, 1867 (1989)"),
    "CuO": Crystal("C2/c", (4.6837, 3.4226, 5.1288, 90, 99.54, 90), ("Cu", "O"),
                   ((0.25, 0.25, 0), (0, 0.4184, 0.25)),
                   "tenorite; Åsbrink & Norrby, Acta Cryst. B 26, 8 (1970)"),
    "Cr2O3": _corundum(4.9588, 13.5942, "Cr", 0.34751, 0.30592,
                       "corundum; Finger & Hazen, J. Appl. Phys. 51, 5362 (1980)"),
    "Fe2O3": _corundum(5.0356, 13.7489, "Fe", 0.35530, 0.3059,
                       "hematite; Blake, Hessevick, Zoltai & Finger, Am. Mineral. 51, 123 (1966)"),
    "V2O3": _corundum(4.9515, 14.003, "V", 0.34630, 0.31164, "corundum, room temperature; Dernier, "
                      "J. Phys. Chem. Solids 31, 2569 (1970)"),
    "MnO2": Crystal("P4_2/mnm", (4.3983, 4.3983, 2.8730, 90, 90, 90), ("Mn", "O"),
                    ((0, 0, 0), (0.30515, 0.30515, 0)),
                    "pyrolusite (rutile type); Bolzan, Fong, Kennedy & Howard, Aust. J. Chem. 46, 939 (1993)"),
    "VO2": Crystal("P2_1/c", (5.7517, 4.5378, 5.3825, 90, 122.646, 90), ("V", "O", "O"),
                   ((0.23947, 0.97894, 0.02646), (0.10616, 0.21185, 0.20859), (0.40051, 0.70258, 0.29884)),
                   "monoclinic M1 (room temperature); Longo & Kierkegaard, Acta Chem. Scand. 24, 420 (1970)"),
    "Mn2O3": Crystal("Ia-3", (9.4146, 9.4146, 9.4146, 90, 90, 90), ("Mn", "Mn", "O"),
                     ((0.25, 0.25, 0.25), (0.9715, 0, 0.25), (0.3851, 0.1461, 0.3811)),
                     "bixbyite, cubic model of alpha-Mn2O3 (room temperature is slightly orthorhombic); "
                     "Geller, Acta Cryst. B 27, 821 (1971)"),
    "LiCoO2": _layered(2.8156, 14.0542, "Co", 0.23951,
                       "alpha-NaFeO2 type; Akimoto, Gotoh & Oosawa, J. Solid State Chem. 141, 298 (1998)"),
    "LiNiO2": _layered(2.8779, 14.1934, "Ni", 0.2413, "alpha-NaFeO2 type, ideal Li/Ni order (real samples "
                       "hold a few % Ni on Li sites); Hirano et al., Solid State Ionics 78, 123 (1995)"),
    "Mn3O4": Crystal("I4_1/amd", (5.765, 5.765, 9.442, 90, 90, 90), ("Mn", "Mn", "O"),
                     ((0, 0, 0), (0, 0.25, 0.625), (0, 0.2222, 0.3839)),
                     "hausmannite, origin choice 1: Mn2+ on 4a (tetrahedral), Mn3+ on 8d (Jahn-Teller octahedra); "
                     "Jarosch, Mineral. Petrol. 37, 15 (1987), as in pymatgen's AFLOW prototype A3B4_tI28_141_ad_h"),
    "K2Cr2O7": Crystal(
        "P-1", (7.3807, 7.4593, 13.3910, 96.205, 98.033, 90.914), ("Cr",) * 4 + ("K",) * 4 + ("O",) * 14,
        ((0.59179, 0.76891, 0.60724), (0.79289, 0.80674, 0.41375), (0.81711, 0.42584, 0.11354),
         (0.81344, 0.15250, -0.08323), (1.10341, 0.66917, 0.64038), (0.25001, 0.76710, 0.34950),
         (0.66252, -0.08518, 0.15847), (0.69509, 0.65240, -0.13583), (0.7201, 0.6124, 0.64937),
         (0.5550, 0.9102, 0.70198), (0.4024, 0.6849, 0.54525), (0.7076, 0.8937, 0.52700), (0.9595, 0.6749, 0.44295),
         (0.8687, 0.9709, 0.36065), (0.6345, 0.6952, 0.33667), (0.6891, 0.2927, 0.16402), (0.9757, 0.5181, 0.19989),
         (0.6948, 0.5751, 0.06114), (0.9299, 0.2957, 0.02274), (0.6919, -0.0006, -0.04330),
         (0.9600, 0.0608, -0.14886), (0.6770, 0.2738, -0.15168)),
        "triclinic phase II (lopezite), 296 K, Z = 4: two Cr2O7 dimers of corner-sharing CrO4 tetrahedra; "
        "Weakley et al., Acta Cryst. B 60, 705 (2004) (COD 2102644)"),
}

#: Measured compounds left out, with the reason.
SKIPPED: dict[str, str] = {
    "Ni2O3": "no reliable ordered crystal structure (its Materials Project entry mvc-894 is hypothetical)",
    "K2CrO4": "no citable source of its published atomic positions found yet (searched public CIF collections)",
    "Na2CrO4": "no citable source of its published atomic positions found yet (searched public CIF collections)",
    "V2O5": "no citable source of its published atomic positions found yet (searched public CIF collections)",
}


@dataclass
class Measured:
    """One measured spectrum: energy (eV) and min-max normalised mu, as published."""

    id: str
    element: str
    formula: str
    mp_id: str
    energy: np.ndarray
    mu: np.ndarray


def experiment_csv() -> Path:
    """Path of ``experiment.csv`` in the installed ``maml-apps-rfxas`` package."""
    spec = find_spec("maml.apps.rfxas")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("measured spectra need the package maml-apps-rfxas: pip install maml-apps-rfxas")
    return Path(spec.origin).parent / "experiment.csv"


def load_measured(path: str | Path | None = None) -> list[Measured]:
    """Measured spectra of the 20 supported absorbers (others, e.g. Sr or Si, are left out)."""
    import pandas as pd

    path = Path(path) if path is not None else experiment_csv()
    table = pd.read_csv(path)
    out = []
    for _, row in table.iterrows():
        if row["absorbing_species"] not in ELEMENTS:
            continue
        energy = np.asarray(ast.literal_eval(row["x_axis_energy"]), float)
        mu = np.asarray(ast.literal_eval(row["interp_spectrum"]), float)
        if energy.shape != mu.shape or not np.all(np.diff(energy) > 0) or not np.all(np.isfinite(mu)):
            raise ValueError(f"{path}: spectrum {row['xas_id']} is malformed")
        out.append(Measured(str(row["xas_id"]), str(row["absorbing_species"]), str(row["formula"]),
                            str(row["mp_id"]), energy, mu))
    return out


def absorber_element(formula: str) -> str:
    """The supported absorbing element of a reference compound (its only one)."""
    (element,) = [e.symbol for e in REFERENCE_STRUCTURES[formula].structure().composition.elements
                  if e.symbol in ELEMENTS]
    return element


def reference_jobs() -> tuple[list, dict[str, dict]]:
    """FEFF jobs (every distinct absorber site) and structure dicts of :data:`REFERENCE_STRUCTURES`,
    for :func:`xanes_utils.feff.generate` (structure ids ``exp-<formula>``)."""
    from xanes_utils.feff import Job

    jobs, structures = [], {}
    for formula, crystal in REFERENCE_STRUCTURES.items():
        structure = crystal.structure()
        structures[f"exp-{formula}"] = structure.as_dict()
        element = absorber_element(formula)
        jobs += [Job(f"exp-{formula}", i, element) for i, _ in absorber_sites(structure, element)]
    return jobs, structures


def absorber_sites(structure: Structure, element: str) -> list[tuple[int, int]]:
    """(representative index, multiplicity) of every symmetry-distinct ``element`` site (the lowest index of
    each set of :func:`xanes_utils.prediction.equivalent_sites`)."""
    from xanes_utils.prediction import equivalent_sites

    groups = dict.fromkeys(equivalent_sites(structure).values())
    return [(group[0], len(group)) for group in groups if structure[group[0]].specie.symbol == element]


def site_average(spectra: list[np.ndarray], multiplicities: list[int]) -> np.ndarray:
    """Multiplicity-weighted mean of site spectra (what a measurement of the compound sees)."""
    w = np.asarray(multiplicities, float)
    return (np.asarray(spectra) * w[:, None]).sum(0) / w.sum()


def _on_grid(measured: Measured, shift: float) -> np.ndarray:
    """The measured spectrum on its element's grid after ``shift`` eV (NaN outside its range)."""
    return np.interp(energy_grid(measured.element), measured.energy + shift, measured.mu,
                     left=np.nan, right=np.nan)


def minmax(y: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``y`` scaled so that its minimum and maximum on ``window`` (a boolean mask) are 0 and 1."""
    lo, hi = np.min(y[window]), np.max(y[window])
    return (y - lo) / (hi - lo) if hi > lo else y - lo


def _aligned(measured: Measured, reference: np.ndarray, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """(experiment, reference) min-max normalised on their common window after ``shift`` (NaN outside)."""
    exp = _on_grid(measured, shift)
    window = np.isfinite(exp)
    if window.sum() < 20:
        raise ValueError(f"{measured.id}: shift {shift:+.2f} eV leaves fewer than 20 common points")
    out_exp, out_ref = np.full_like(exp, np.nan), np.full_like(exp, np.nan)
    out_exp[window], out_ref[window] = minmax(exp, window)[window], minmax(reference, window)[window]
    return out_exp, out_ref


def best_shift(measured: Measured, reference: np.ndarray, shifts: np.ndarray = SHIFTS) -> float:
    """Shift (eV) of the experiment that minimises its MSE to ``reference`` on the common window."""
    costs = []
    for shift in shifts:
        try:
            exp, ref = _aligned(measured, reference, shift)
            costs.append(np.nanmean((exp - ref) ** 2))
        except ValueError:
            costs.append(np.inf)
    return float(shifts[int(np.argmin(costs))])


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MSE, Pearson r, Spearman rho and cosine similarity on the finite points of ``y_true``."""
    ok = np.isfinite(y_true) & np.isfinite(y_pred)
    t, p = y_true[ok], y_pred[ok]
    return {"mse": float(np.mean((t - p) ** 2)), "pearson": float(np.corrcoef(t, p)[0, 1]),
            "spearman": float(spearmanr(t, p).statistic),
            "cosine": float(t @ p / (np.linalg.norm(t) * np.linalg.norm(p)))}


def loo_shifts(measured: list[Measured], feff: dict[str, np.ndarray]) -> dict[str, float]:
    """Leave-one-out shift per measured spectrum id (see the module docstring)."""
    best = {m.id: best_shift(m, feff[m.id]) for m in measured}
    out = {}
    for m in measured:
        same = [best[o.id] for o in measured if o.element == m.element and o.formula != m.formula]
        other = [best[o.id] for o in measured if o.element != m.element]
        if not same and not other:
            raise ValueError(f"{m.id}: a leave-one-out shift needs another measured compound")
        out[m.id] = float(np.median(same if same else other))
    return out


def compare(measured: list[Measured], feff: dict[str, np.ndarray], model: dict[str, np.ndarray],
            baseline: dict[str, np.ndarray], model_std: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Per measured spectrum: the shifts, aligned curves and metrics of FEFF, model and baseline against
    experiment.

    ``feff`` and ``model`` map a measured id to the multiplicity-weighted site average on the grid;
    ``baseline`` maps an element to its mean training spectrum (the trivial prediction η is measured against);
    ``model_std`` (optional) maps an id to the prediction's standard deviation, returned as ``model_std``
    in the model curve's min-max units.
    """
    shifts = loo_shifts(measured, feff)
    rows = []
    for m in measured:
        shift = shifts[m.id]
        exp, feff_curve = _aligned(m, feff[m.id], shift)
        _, model_curve = _aligned(m, model[m.id], shift)
        band = {}
        if model_std is not None:
            window = np.isfinite(exp)
            span = np.ptp(model[m.id][window])
            band["model_std"] = np.where(window, model_std[m.id] / span if span > 0 else np.nan, np.nan)
        _, base_curve = _aligned(m, baseline[m.element], shift)
        f, p, b = metrics(exp, feff_curve), metrics(exp, model_curve), metrics(exp, base_curve)
        rows.append({"id": m.id, "element": m.element, "formula": m.formula, "shift": shift,
                     "best_shift_feff": best_shift(m, feff[m.id]), "best_shift_model": best_shift(m, model[m.id]),
                     "energy": energy_grid(m.element), "experiment": exp, "feff": feff_curve, "model": model_curve,
                     "baseline": base_curve, **{f"feff_{k}": v for k, v in f.items()},
                     **{f"model_{k}": v for k, v in p.items()}, **{f"baseline_{k}": v for k, v in b.items()},
                     "mse_ratio": p["mse"] / f["mse"], **band})
    return rows


#: Where the FEFF10 spectra of the reference structures are kept (computed by :func:`compute_feff`).
FEFF_DIR = Path(__file__).resolve().parent.parent / "data" / "experiment_feff"


def compute_feff(out_dir: str | Path = FEFF_DIR, workers: int = 1) -> dict[str, int]:
    """FEFF10 (dataset settings) for every distinct absorber site of the reference structures; resumable."""
    from xanes_utils.feff import generate

    jobs, structures = reference_jobs()
    return generate(jobs, structures, out_dir, workers)


def site_averaged(formula: str, site_spectra: dict[int, np.ndarray]) -> np.ndarray:
    """Multiplicity-weighted average of a reference compound's site spectra (every distinct site needed)."""
    structure = REFERENCE_STRUCTURES[formula].structure()
    sites = absorber_sites(structure, absorber_element(formula))
    missing = [i for i, _ in sites if i not in site_spectra]
    if missing:
        raise KeyError(f"{formula}: no spectrum for sites {missing}")
    return site_average([site_spectra[i] for i, _ in sites], [m for _, m in sites])


def feff_averages(out_dir: str | Path = FEFF_DIR) -> dict[str, np.ndarray]:
    """Site-averaged FEFF10 spectrum of every reference compound whose sites are all computed."""
    from xanes_utils.dataset import finished_record_paths
    from xanes_utils.io import read_json

    per_formula: dict[str, dict[int, np.ndarray]] = {}
    for path in finished_record_paths(out_dir):
        rec = read_json(path)
        formula = rec["structure_id"].removeprefix("exp-")
        per_formula.setdefault(formula, {})[rec["absorbing_index"]] = np.asarray(rec["y"])
    out = {}
    for formula, spectra in per_formula.items():
        try:
            out[formula] = site_averaged(formula, spectra)
        except KeyError as exc:
            log.warning("%s", exc)
    return out


@dataclass
class ModelAverage:
    """A model's site-averaged prediction of a reference compound: ``mu`` [111]; with an ensemble also
    ``std`` [111] (calibrated spread of the members' site averages) and the multiplicity-weighted mean
    domain ``score`` of its sites (NaN for a single model) and whether any site is flagged."""

    mu: np.ndarray
    std: np.ndarray | None = None
    score: float = float("nan")
    out_of_domain: bool = False


def model_averages(model) -> dict[str, ModelAverage]:
    """Site-averaged prediction of ``model`` (one network or an ensemble) for every reference compound."""
    from xanes_utils.ensemble import Ensemble, mean_std, predict_ensemble
    from xanes_utils.prediction import model_graphs
    from xanes_utils.train import predict_graphs

    out = {}
    for formula, crystal in REFERENCE_STRUCTURES.items():
        structure = crystal.structure()
        sites = absorber_sites(structure, absorber_element(formula))
        graphs = model_graphs(structure, [i for i, _ in sites], model.config, formula)
        weights = [m for _, m in sites]
        if not isinstance(model, Ensemble):
            out[formula] = ModelAverage(site_average(list(predict_graphs(model, graphs)), weights))
            continue
        result = predict_ensemble(model, graphs)
        mu, std = mean_std(np.stack([site_average(list(m), weights) for m in result.members]))  # [M, 111]
        out[formula] = ModelAverage(mu, model.scale * std,
                                    float(np.average(result.score, weights=weights)), bool(result.out_of_domain.any()))
    return out

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("FEFF of the reference structures: %s", compute_feff())
