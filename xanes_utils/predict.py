"""Predict the K-edge XANES of transition-metal sites in a crystal (pymatgen Structure, CIF or POSCAR)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pymatgen.core import Structure

from xanes_utils.elements import ELEMENTS, UnsupportedElementError, energy_grid
from xanes_utils.structures import StructureError, check_structure, distinct_sites, supported_absorbers


@dataclass
class Prediction:
    """Predicted spectrum of one site: ``energy`` (eV, 111 points) and edge-step normalised ``mu``."""

    element: str
    site: int
    energy: np.ndarray
    mu: np.ndarray


def read_structure(source: Structure | str | Path) -> tuple[Structure, str]:
    """A Structure and a name for messages, from a Structure or a CIF/POSCAR path (clear errors)."""
    if isinstance(source, Structure):
        return source, "structure"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - pymatgen's parsers raise many types for bad files
        raise StructureError(f"{path}: cannot read a crystal structure ({type(exc).__name__}: {exc})") from exc
    return structure, str(path)


def resolve_sites(structure: Structure, sites: Sequence[int] | None, name: str = "structure") -> list[int]:
    """Requested sites checked, or every symmetry-distinct site of the supported absorbers."""
    check_structure(structure, name)
    if sites is None:
        try:
            return sorted(i for el in supported_absorbers(structure) for i in distinct_sites(structure, el))
        except ValueError as exc:  # spglib finds no symmetry for some degenerate cells
            raise StructureError(f"{name}: symmetry analysis failed ({exc}); pass the sites to predict") from exc
    for i in sites:
        if not 0 <= i < len(structure):
            raise IndexError(f"{name}: site {i} out of range (structure has {len(structure)} sites)")
        if structure[i].specie.symbol not in ELEMENTS:
            raise UnsupportedElementError(f"{name}: site {i} is {structure[i].species_string}, not a supported "
                                          f"absorber ({', '.join(ELEMENTS)})")
    return list(sites)


def predict(structure: Structure | str | Path, sites: Sequence[int] | None = None, model=None,
            ) -> list[Prediction]:
    """Predicted K-edge XANES for ``sites`` of ``structure`` (default: every distinct supported site).

    ``model`` defaults to the committed model trained on the embedded data (``load_model()``).
    """
    from xanes_utils.graphs import build_graph
    from xanes_utils.train import load_model, predict_graphs

    structure, name = read_structure(structure)
    indices = resolve_sites(structure, sites, name)
    model = model if model is not None else load_model()
    graphs = [build_graph(structure, i, name=name, n_neighbours=model.config.neighbours) for i in indices]
    mus = predict_graphs(model, graphs)
    out = []
    for i, mu in zip(indices, mus):
        element = structure[i].specie.symbol
        if not np.all(np.isfinite(mu)):
            raise ValueError(f"{name}: the model predicted NaN or infinite values for site {i} ({element}); "
                             "its weights are probably corrupt")
        out.append(Prediction(element=element, site=i, energy=energy_grid(element), mu=np.asarray(mu, float)))
    return out


def write_predictions(predictions: Sequence[Prediction], out_dir: str | Path, stem: str) -> list[Path]:
    """One CSV (energy_eV, mu) and one PNG plot per predicted site; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for p in predictions:
        base = out_dir / f"{stem}_site{p.site}_{p.element}_K"
        np.savetxt(base.with_suffix(".csv"), np.column_stack([p.energy, p.mu]), delimiter=",",
                   header="energy_eV,mu_normalised", comments="", fmt="%.4f")
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(p.energy, p.mu, color="#0072B2")
        ax.set_xlabel("Energy (eV)")
        ax.set_ylabel("Normalised μ(E)")
        ax.set_title(f"{stem}: {p.element} K-edge XANES, site {p.site} (predicted)")
        fig.tight_layout()
        fig.savefig(base.with_suffix(".png"), dpi=120)
        plt.close(fig)
        written += [base.with_suffix(".csv"), base.with_suffix(".png")]
    return written
