"""Predict the K-edge XANES of transition-metal sites in a crystal (pymatgen Structure, CIF or POSCAR).

Site indices are 0-based positions in the structure as pymatgen reads it, which for a CIF is not the
order of the file's atom list (symmetry operations generate the sites): each :class:`Prediction` also
carries the site's CIF label, and the 0-based indices of the sites symmetry-equivalent to it.

The energy axis is FEFF's absolute scale, not aligned to any experiment: see
:func:`xanes_utils.elements.energy_grid`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pymatgen.core import Structure

from xanes_utils.elements import ELEMENTS, UnsupportedElementError, check_element, energy_grid
from xanes_utils.io import safe_name
from xanes_utils.structures import StructureError, check_structure


@dataclass
class Prediction:
    """Predicted spectrum of one site.

    ``site`` is the 0-based index in pymatgen's order, ``label`` the site's label in the file (a CIF's
    ``_atom_site_label``; the element for formats without labels), ``equivalent`` the 0-based indices
    of every site symmetry-equivalent to it (``site`` included; its length is the multiplicity),
    ``energy`` in eV (111 points, FEFF's absolute scale) and ``mu`` edge-step normalised.
    """

    element: str
    site: int
    energy: np.ndarray
    mu: np.ndarray
    label: str = ""
    equivalent: tuple[int, ...] = ()
    source: str = "structure"

    @property
    def multiplicity(self) -> int:
        """Number of sites in the cell that are symmetry-equivalent to this one (itself included)."""
        return len(self.equivalent) or 1


def read_structure(source: Structure | str | Path) -> tuple[Structure, str]:
    """A Structure and a name for messages, from a Structure or a CIF/POSCAR path (clear errors)."""
    if isinstance(source, Structure):
        return source, "structure"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise StructureError(f"{path}: is a directory, not a structure file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - pymatgen's parsers raise many types for bad files
        raise StructureError(f"{path}: cannot read a crystal structure ({type(exc).__name__}: {exc})") from exc
    if len(structure) == 0:
        raise StructureError(f"{path}: the file holds no atoms")
    return structure, str(path)


def equivalent_sites(structure: Structure, symprec: float = 0.01) -> dict[int, tuple[int, ...]]:
    """For every site index, the sorted indices of the sites symmetry-equivalent to it."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    groups = SpacegroupAnalyzer(structure, symprec=symprec).get_symmetrized_structure().equivalent_indices
    return {i: tuple(sorted(group)) for group in groups for i in group}


def resolve_sites(structure: Structure, sites: Sequence[int] | None, equivalent: dict[int, tuple[int, ...]],
                  name: str = "structure") -> list[int]:
    """Requested sites (0-based) checked, or the first of each symmetry-equivalent set of supported
    absorbers (``equivalent`` from :func:`equivalent_sites`)."""
    if sites is None:
        return sorted({group[0] for group in equivalent.values() if structure[group[0]].specie.symbol in ELEMENTS})
    if not sites:
        raise ValueError(f"{name}: no site indices given (omit them to predict every distinct site)")
    for i in sites:
        if not 0 <= i < len(structure):
            raise IndexError(f"{name}: site {i} out of range: the structure has {len(structure)} sites, "
                             f"numbered from 0 to {len(structure) - 1}")
        try:
            check_element(structure[i].specie.symbol)
        except UnsupportedElementError as exc:
            raise UnsupportedElementError(f"{name}: site {i} ({_label(structure, i)}): {exc}") from exc
    return list(sites)


def _label(structure: Structure, i: int) -> str:
    """The site's label in the file, or its element where the format has none."""
    return str(getattr(structure[i], "label", None) or structure[i].specie.symbol)


def predict(structure: Structure | str | Path, sites: Sequence[int] | None = None, model=None,
            ) -> list[Prediction]:
    """Predicted K-edge XANES for ``sites`` (0-based) of ``structure`` (default: every distinct
    supported site; symmetry-equivalent sites share one prediction, see :attr:`Prediction.equivalent`).

    ``model`` defaults to the committed model trained on the embedded data (``load_model()``).
    """
    from xanes_utils.graphs import build_graph
    from xanes_utils.train import load_model, predict_graphs

    structure, name = read_structure(structure)
    check_structure(structure, name)
    try:
        equivalent = equivalent_sites(structure)
    except ValueError as exc:  # spglib finds no symmetry for some degenerate cells
        raise StructureError(f"{name}: symmetry analysis failed ({exc})") from exc
    indices = resolve_sites(structure, sites, equivalent, name)
    model = model if model is not None else load_model()
    mus = predict_graphs(model, [build_graph(structure, i, name=name, n_neighbours=model.config.neighbours)
                                 for i in indices])
    out = []
    for i, mu in zip(indices, mus):
        element = structure[i].specie.symbol
        if not np.all(np.isfinite(mu)):
            raise ValueError(f"{name}: the model predicted NaN or infinite values for site {i} ({element}); "
                             "its weights are probably corrupt")
        out.append(Prediction(element=element, site=i, energy=energy_grid(element), mu=np.asarray(mu, float),
                              label=_label(structure, i), equivalent=equivalent.get(i, (i,)), source=name))
    return out


def average_by_element(predictions: Sequence[Prediction]) -> dict[str, tuple[np.ndarray, int]]:
    """Multiplicity-weighted mean spectrum per element and the number of sites it averages (what a
    measurement of the whole material sees, when ``predictions`` cover every distinct site of that
    element); a set of equivalent sites counts once however many of its members were predicted."""
    out = {}
    for element in dict.fromkeys(p.element for p in predictions):
        group = list({p.equivalent or (p.site,): p for p in predictions if p.element == element}.values())
        weights = [p.multiplicity for p in group]
        out[element] = np.average([p.mu for p in group], axis=0, weights=weights), sum(weights)
    return out


def write_predictions(predictions: Sequence[Prediction], out_dir: str | Path, stem: str) -> list[Path]:
    """Write, for one structure, a CSV (energy_eV, mu) and PNG per predicted site, a multiplicity-weighted
    average per element, and ``<stem>_sites.csv`` listing each site's 0-based index, label,
    multiplicity and equivalent indices; returns the written paths.

    File names hold the stem, site label and index, so sites and files never overwrite each other.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: exists and is not a directory (--out needs a directory)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    rows = ["site_index_0based,label,element,multiplicity,equivalent_indices_0based,spectrum_csv"]
    for p in predictions:
        base = out_dir / f"{stem}_{safe_name(p.label)}_site{p.site}_{p.element}_K"
        title = f"{stem}: {p.element} K-edge, {p.label} (site {p.site}, 0-based; multiplicity {p.multiplicity})"
        written += _write_spectrum(base, p.energy, p.mu, title + ", predicted")
        rows.append(f"{p.site},{p.label},{p.element},{p.multiplicity},{' '.join(map(str, p.equivalent))},"
                    f"{written[-2].name}")
    for element, (mu, n_sites) in average_by_element(predictions).items():
        written += _write_spectrum(out_dir / f"{stem}_{element}_K_average", energy_grid(element), mu,
                                   f"{stem}: {element} K-edge, average of {n_sites} sites weighted by "
                                   f"multiplicity, predicted")
        rows.append(f",average,{element},{n_sites},,{written[-2].name}")
    index = out_dir / f"{stem}_sites.csv"
    index.write_text("\n".join(rows) + "\n")
    return written + [index]


def _write_spectrum(base: Path, energy: np.ndarray, mu: np.ndarray, title: str) -> list[Path]:
    """``base``.csv (energy_eV, mu_normalised) and ``base``.png; ``base`` may contain dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv, png = base.with_name(base.name + ".csv"), base.with_name(base.name + ".png")
    np.savetxt(csv, np.column_stack([energy, mu]), delimiter=",", header="energy_eV,mu_normalised",
               comments="", fmt="%.4f")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(energy, mu, color="#0072B2")
    ax.set_xlabel("Energy (eV, FEFF absolute scale)")
    ax.set_ylabel("Normalised μ(E)")
    ax.set_title(title, fontsize=9, wrap=True)
    fig.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [csv, png]
