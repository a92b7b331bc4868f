"""Reader of OmniXAS-style site spectra in JSON lines, for validation on real Materials Project structures.

Each line holds ``id``, ``material``, ``element``, ``site`` (the absorber's index), ``structure`` (a
pymatgen dict) and FEFF's ``energy`` (eV) and edge-step normalised ``mu``. Such spectra come from another
FEFF version with other settings, so their absolute energies differ from ours by about an eV:
:func:`to_records` puts them on the paper's grid after one global ``shift``, and :func:`fit_shift` finds
the shift that aligns their mean with a reference mean spectrum (model-independent, so every model is
scored against the same targets). A bad line is skipped with a warning naming the file, the line and the
problem (``strict=True`` raises instead).
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from xanes_utils.dataset import Record
from xanes_utils.elements import check_element, energy_grid
from xanes_utils.feff import to_grid
from xanes_utils.io import CorruptFileError

log = logging.getLogger(__name__)


@dataclass
class RawSpectrum:
    """One site's spectrum as computed (``energy`` in eV, not on the paper's grid)."""

    id: str
    material: str
    element: str
    site: int
    structure_dict: dict
    energy: np.ndarray
    mu: np.ndarray


def read_jsonl(path: str | Path, strict: bool = False) -> list[RawSpectrum]:
    """Validated spectra of a (gzipped) JSON-lines file (see the module docstring)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    try:
        with opener(path, "rt") as fh:
            lines = list(fh)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path}: cannot read ({exc})") from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(_parse(json.loads(line)))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            message = f"{path}, line {n}: {type(exc).__name__}: {exc}"
            if strict:
                raise ValueError(message) from exc
            log.warning("skipped %s", message)
    return out


def _parse(entry: dict) -> RawSpectrum:
    element = check_element(str(entry["element"]))
    structure = Structure.from_dict(entry["structure"])
    site = int(entry["site"])
    if not structure.is_ordered:
        raise ValueError("disordered structure")
    if structure[site].specie.symbol != element:
        raise ValueError(f"site {site} is {structure[site].specie.symbol}, not {element}")
    energy, mu = np.asarray(entry["energy"], float), np.asarray(entry["mu"], float)
    if energy.shape != mu.shape or energy.size < 2 or not np.all(np.isfinite(mu)) or not np.all(np.diff(energy) > 0):
        raise ValueError("energy and mu must be finite, of equal length, with increasing energies")
    return RawSpectrum(str(entry["id"]), str(entry.get("material", "")), element, site, entry["structure"],
                       energy, mu)


def to_records(spectra: list[RawSpectrum], shift: float = 0.0) -> list[Record]:
    """The spectra on the paper's grid after adding ``shift`` eV to their energies."""
    out = []
    for s in spectra:
        grid, mu = to_grid(s.energy + shift, s.mu, s.element)
        out.append(Record(id=s.id, element=s.element, site=s.site, structure_dict=s.structure_dict,
                          energy=grid, mu=mu, source={"library": "omnixas", "shift_eV": shift},
                          material_id=s.material))
    return out


def fit_shift(spectra: list[RawSpectrum], reference: dict[str, np.ndarray],
              shifts: np.ndarray = np.arange(-5.0, 5.01, 0.1)) -> float:
    """The global shift (eV) whose gridded mean spectrum per element is closest (MSE) to ``reference``."""
    elements = sorted({s.element for s in spectra})
    costs = []
    for shift in shifts:
        cost = 0.0
        for el in elements:
            grid = energy_grid(el)
            mus = [np.interp(grid, s.energy + shift, s.mu, left=0.0) for s in spectra if s.element == el]
            cost += float(np.mean((np.mean(mus, axis=0) - reference[el]) ** 2))
        costs.append(cost)
    return float(np.round(shifts[int(np.argmin(costs))], 3))
