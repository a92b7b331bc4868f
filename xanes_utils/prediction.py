"""Predict the K-edge XANES of transition-metal sites in a crystal (pymatgen Structure, CIF or POSCAR).

Site indices are 0-based positions in the structure as pymatgen reads it, which for a CIF is not the
order of the file's atom list (symmetry operations generate the sites): each :class:`Prediction` also
carries the site's CIF label, and the 0-based indices of the sites symmetry-equivalent to it.

The energy axis is FEFF's absolute scale, not aligned to any experiment: see
:func:`xanes_utils.elements.energy_grid`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Sequence

import numpy as np
from pymatgen.core import Structure

from xanes_utils.elements import ELEMENTS, UnsupportedElementError, check_element, energy_grid
from xanes_utils.io import safe_name
from xanes_utils.structures import StructureError, check_structure

if TYPE_CHECKING:
    from torch_geometric.data import Data

    from xanes_utils.model import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Predicted spectrum of one site.

    ``site`` is the 0-based index in pymatgen's order, ``label`` the site's label in the file (a CIF's
    ``_atom_site_label``; the element for formats without labels), ``equivalent`` the 0-based indices
    of every site symmetry-equivalent to it (``site`` included; its length is the multiplicity),
    ``energy`` in eV (111 points, FEFF's absolute scale) and ``mu`` edge-step normalised.

    With an ensemble (the default model), ``mu`` is the members' mean and ``mu_std`` its calibrated
    standard deviation per point (``None`` for a single model); ``domain_score`` measures how far the
    site's environment lies from the training sites (1: a typical validation site) and ``out_of_domain``
    is set when it exceeds the threshold chosen on validation data (trust the spectrum less than the
    band says). ``corehole`` is FEFF's core-hole treatment the spectrum stands for (``FSR``: the dataset's;
    ``RPA``: mapped by :mod:`xanes_utils.corehole`).
    """

    element: str
    site: int
    energy: np.ndarray
    mu: np.ndarray
    label: str = ""
    equivalent: tuple[int, ...] = ()
    source: str = "structure"
    mu_std: np.ndarray | None = None
    domain_score: float | None = None
    out_of_domain: bool = False
    corehole: str = "FSR"

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


def model_graphs(structure: Structure, sites: Sequence[int], config: ModelConfig, name: str = "structure"
                 ) -> list[Data]:
    """Star graphs of ``structure``'s ``sites`` with what a model of ``config`` reads: its number of
    neighbour slots and, when it uses them, the absorbers' site embeddings."""
    from xanes_utils.graphs import build_graph

    graphs = [build_graph(structure, i, name=name, n_neighbours=config.neighbours) for i in sites]
    if config.site_embedding:
        from xanes_utils.site_embeddings import attach_site_embeddings

        attach_site_embeddings(graphs, [SimpleNamespace(structure=structure, site=i, id=f"{name} site {i}")
                                        for i in sites], progress=False, width=config.site_embedding)
    return graphs


def predict(structure: Structure | str | Path, sites: Sequence[int] | None = None, model=None,
            corehole: str = "FSR", transfers: str | Path | None = None) -> list[Prediction]:
    """Predicted K-edge XANES for ``sites`` (0-based) of ``structure`` (default: every distinct
    supported site; symmetry-equivalent sites share one prediction, see :attr:`Prediction.equivalent`).

    ``model`` defaults to the committed ensemble trained on the embedded data (``load_model()``), which
    sets :attr:`Prediction.mu_std` and flags sites outside its domain (with a logged warning).
    ``corehole`` ``RPA`` maps the model's spectra (FEFF's full FSR core hole, the dataset's) to the screened
    RPA core hole with the core-hole transfers in ``transfers`` (default: the committed ones; see
    :mod:`xanes_utils.corehole`); an ensemble's members are mapped one by one, so the band is their spread.
    """
    from xanes_utils.corehole import DEFAULT_TRANSFERS, load_transfers, transfer_spectra
    from xanes_utils.ensemble import Ensemble, mean_std, predict_ensemble
    from xanes_utils.feff import COREHOLES
    from xanes_utils.train import load_model, predict_graphs

    if corehole not in COREHOLES:
        raise ValueError(f"corehole must be one of {COREHOLES}, not {corehole!r}")
    structure, name = read_structure(structure)
    check_structure(structure, name)
    try:
        equivalent = equivalent_sites(structure)
    except ValueError as exc:  # spglib finds no symmetry for some degenerate cells
        raise StructureError(f"{name}: symmetry analysis failed ({exc})") from exc
    indices = resolve_sites(structure, sites, equivalent, name)
    elements = [structure[i].specie.symbol for i in indices]
    if corehole == "RPA":
        transfers = transfers or DEFAULT_TRANSFERS
        transfer = load_transfers(transfers)
        missing = sorted(set(elements) - set(transfer))
        if missing:
            raise ValueError(f"{name}: {transfers} holds no core-hole transfer for {', '.join(missing)} (only for "
                             f"{', '.join(sorted(transfer))}); predict with the FSR core hole instead")
    model = model if model is not None else load_model()
    graphs = model_graphs(structure, indices, model.config, name)
    if isinstance(model, Ensemble):
        result = predict_ensemble(model, graphs)
        mus, stds, scores, flags = result.mu, result.mu_std, result.score, result.out_of_domain
        if corehole == "RPA":
            mus, raw = mean_std(np.stack([transfer_spectra(transfer, m, elements) for m in result.members]))
            stds = model.scale * raw
    else:
        mus = predict_graphs(model, graphs)
        if corehole == "RPA":
            mus = transfer_spectra(transfer, mus, elements)
        stds, scores, flags = [None] * len(indices), [None] * len(indices), [False] * len(indices)
    out = []
    for i, element, mu, std, score, flag in zip(indices, elements, mus, stds, scores, flags):
        if not np.all(np.isfinite(mu)) or (std is not None and not np.all(np.isfinite(std))):
            raise ValueError(f"{name}: the model predicted NaN or infinite values for site {i} ({element}); "
                             "its weights are probably corrupt")
        out.append(Prediction(element=element, site=i, energy=energy_grid(element), mu=np.asarray(mu, float),
                              label=_label(structure, i), equivalent=equivalent.get(i, (i,)), source=name,
                              mu_std=None if std is None else np.asarray(std, float),
                              domain_score=None if score is None else float(score), out_of_domain=bool(flag),
                              corehole=corehole))
        if flag:
            log.warning("%s: site %d (%s, %s) is out of the training domain (score %.2f > threshold %.2f): "
                        "the spectrum may be wrong by more than its band", name, i, out[-1].label, element,
                        score, model.domain.threshold)
    return out


def average_by_element(predictions: Sequence[Prediction]) -> dict[str, tuple[np.ndarray, np.ndarray | None, int]]:
    """Multiplicity-weighted mean spectrum per element, its standard deviation and the number of sites it
    averages (what a measurement of the whole material sees, when ``predictions`` cover every distinct
    site of that element); a set of equivalent sites counts once however many of its members were
    predicted. The standard deviation is the weighted mean of the sites' (``None`` without bands): exact
    when the sites' errors are fully correlated, an upper bound otherwise."""
    out = {}
    for element in dict.fromkeys(p.element for p in predictions):
        group = list({p.equivalent or (p.site,): p for p in predictions if p.element == element}.values())
        weights = [p.multiplicity for p in group]
        std = (None if any(p.mu_std is None for p in group)
               else np.average([p.mu_std for p in group], axis=0, weights=weights))
        out[element] = np.average([p.mu for p in group], axis=0, weights=weights), std, sum(weights)
    return out


def write_predictions(predictions: Sequence[Prediction], out_dir: str | Path, stem: str) -> list[Path]:
    """Write, for one structure, a CSV (energy_eV, mu and, with an ensemble, mu_std) and PNG (with the
    ±2σ band) per predicted site, a multiplicity-weighted average per element, and ``<stem>_sites.csv``
    listing each site's 0-based index, label, multiplicity, equivalent indices, domain score and
    out-of-domain flag; returns the written paths.

    File names hold the stem, site label and index, so sites and files never overwrite each other.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: exists and is not a directory (--out needs a directory)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    rows = ["site_index_0based,label,element,multiplicity,equivalent_indices_0based,domain_score,out_of_domain,"
            "spectrum_csv"]
    for p in predictions:
        base = out_dir / f"{stem}_{safe_name(p.label)}_site{p.site}_{p.element}_K"
        title = (f"{stem}: {p.element} K-edge ({p.corehole} core hole), {p.label} (site {p.site}, 0-based; "
                 f"multiplicity {p.multiplicity})")
        if p.out_of_domain:
            title += ", OUT OF TRAINING DOMAIN"
        written += _write_spectrum(base, p.energy, p.mu, p.mu_std, title + ", predicted")
        score = "" if p.domain_score is None else f"{p.domain_score:.3f}"
        rows.append(f"{p.site},{p.label},{p.element},{p.multiplicity},{' '.join(map(str, p.equivalent))},"
                    f"{score},{int(p.out_of_domain)},{written[-2].name}")
    for element, (mu, std, n_sites) in average_by_element(predictions).items():
        written += _write_spectrum(out_dir / f"{stem}_{element}_K_average", energy_grid(element), mu, std,
                                   f"{stem}: {element} K-edge, average of {n_sites} sites weighted by "
                                   f"multiplicity, predicted")
        flagged = int(any(p.out_of_domain for p in predictions if p.element == element))
        rows.append(f",average,{element},{n_sites},,,{flagged},{written[-2].name}")
    index = out_dir / f"{stem}_sites.csv"
    index.write_text("\n".join(rows) + "\n")
    return written + [index]


def _write_spectrum(base: Path, energy: np.ndarray, mu: np.ndarray, std: np.ndarray | None, title: str
                    ) -> list[Path]:
    """``base``.csv (energy_eV, mu_normalised[, mu_std]) and ``base``.png (±2σ band shaded when ``std`` is
    given); ``base`` may contain dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv, png = base.with_name(base.name + ".csv"), base.with_name(base.name + ".png")
    columns, header = [energy, mu], "energy_eV,mu_normalised"
    if std is not None:
        columns, header = columns + [std], header + ",mu_std"
    np.savetxt(csv, np.column_stack(columns), delimiter=",", header=header, comments="", fmt="%.4f")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if std is not None:
        ax.fill_between(energy, mu - 2 * std, mu + 2 * std, color="#56B4E9", alpha=0.4, linewidth=0,
                        label="±2σ (ensemble, calibrated)")
    ax.plot(energy, mu, color="#0072B2", label="prediction")
    if std is not None:
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel("Energy (eV, FEFF absolute scale)")
    ax.set_ylabel("Normalised μ(E)")
    ax.set_title(title, fontsize=9, wrap=True)
    fig.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [csv, png]
