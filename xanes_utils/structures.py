"""Crystal structures for the embedded dataset: packaged prototypes plus charge- and radius-aware substitution.

Sources are structures shipped inside installed packages (no downloads):

* pymatgen's AFLOW prototype library (288 ordered structures);
* robocrys' mineral database, when robocrys is installed (optional extra ``generate``);
* pymatgen's own example structures (``pymatgen/util/structures``: TiO2, SrTiO3, LiFePO4, ...).

Every transition-metal (or other metal) site type of a source structure may be replaced by one of the
20 absorbing elements. A substitution is kept only when it is chemically sensible:

* ionic structures (an oxidation-state assignment exists): the new element must take the same
  oxidation state (commonly or in the ICSD), so the formula stays charge balanced, and its Shannon
  radius must lie within ``RADIUS_TOLERANCE`` of the replaced ion's;
* metallic structures (no assignment): the atomic radii must lie within the same tolerance.

The cell volume is rescaled by the ratio of summed ionic (or atomic) volumes before and after, and the
result is deduplicated with :class:`pymatgen.analysis.structure_matcher.StructureMatcher`.
"""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.util import find_spec

import numpy as np

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element, Species, Structure

from xanes_utils.elements import ELEMENTS

log = logging.getLogger(__name__)

#: Largest relative difference of ionic (or atomic) radii accepted for a substitution.
RADIUS_TOLERANCE = 0.30
#: Largest cell (sites) kept: FEFF only needs the local cluster, but symmetry analysis grows with size.
MAX_SITES = 64
#: Closest approach of two atoms accepted (Å): shorter than any bond (H2: 0.74 Å); closer atoms overlap.
MIN_DISTANCE = 0.5
#: Longest lattice vector accepted (Å): longer cells are not crystals, and neighbour searches explode.
MAX_LENGTH = 1000.0
#: Largest atomic number accepted: pymatgen tabulates ground-state configurations up to Rf (Z = 104).
MAX_Z = 104


#: Neighbours closer than this many Å beyond the nearest count as first shell.
SHELL_TOLERANCE = 0.3


def first_shell_neighbours(structure: Structure, site: int, cutoff: float = 5.0) -> list:
    """Neighbours (pymatgen ``PeriodicNeighbor``) within ``SHELL_TOLERANCE`` Å of the nearest one."""
    neighbours = structure.get_neighbors(structure[site], cutoff)
    if not neighbours:
        return []
    nearest = min(nb.nn_distance for nb in neighbours)
    return [nb for nb in neighbours if nb.nn_distance <= nearest + SHELL_TOLERANCE]


class StructureError(ValueError):
    """A structure that cannot be used: unreadable, degenerate, overlapping atoms, no supported absorber."""


@dataclass
class SourceStructure:
    """A structure with its provenance: ``source`` names the prototype/mineral and the substitution."""

    id: str
    structure: Structure
    source: dict = field(default_factory=dict)


def source_family(source: dict, fallback: str) -> str:
    """The structure family a ``source`` descends from: its AFLOW prototype or pymatgen example, whatever
    was substituted into it; ``fallback`` (e.g. the structure's id) for a structure of no library."""
    return source.get("prototype") or source.get("example") or fallback


def _aflow_path() -> str:
    spec = find_spec("pymatgen.analysis.prototypes")
    return os.path.join(os.path.dirname(spec.origin), "aflow_prototypes.json.gz")


def aflow_prototypes() -> list[SourceStructure]:
    """Ordered structures of pymatgen's AFLOW prototype library, with their AFLOW labels.

    A label is not unique in the library (marcasite FeS2, CaCl2 and Fe2C are all ``AB2_oP6_58_a_g``):
    the id is ``aflow-<label>`` for a unique label and ``aflow-<label>-<reduced formula>`` otherwise.
    """
    from monty.serialization import loadfn

    entries = [e for e in loadfn(_aflow_path()) if e["snl"].structure.is_ordered]
    label_count = Counter(e["tags"]["aflow"] for e in entries)
    out = []
    for entry in entries:
        structure, label = entry["snl"].structure, entry["tags"]["aflow"]
        suffix = f"-{structure.composition.reduced_formula}" if label_count[label] > 1 else ""
        out.append(SourceStructure(
            id=f"aflow-{label}{suffix}",
            structure=structure,
            source={"library": "aflow", "prototype": label, "mineral": entry["tags"].get("mineral", "")},
        ))
    return out


def robocrys_minerals(path: str | None = None) -> list[SourceStructure]:
    """Ordered structures of robocrys' mineral database (empty if robocrys is not installed).

    The database is a pandas ``orient="split"`` JSON table with ``structure`` and ``mineral`` columns;
    ``path`` overrides the packaged file.
    """
    import pandas as pd

    if path is None:
        spec = find_spec("robocrys")
        if spec is None:
            log.info("robocrys is not installed: mineral database skipped")
            return []
        path = os.path.join(os.path.dirname(spec.origin), "condense", "mineral_db.json.gz")
    table = pd.read_json(path, compression="infer", orient="split")
    out = []
    for i, row in table.iterrows():
        structure = Structure.from_dict(row["structure"])
        if structure.is_ordered:
            name = str(row["mineral"]).replace(" ", "_")
            out.append(SourceStructure(id=f"mineral-{name}-{i}", structure=structure,
                                       source={"library": "robocrys", "mineral": str(row["mineral"])}))
    return out


def pymatgen_examples() -> list[SourceStructure]:
    """Ordered structures shipped with pymatgen as examples (``pymatgen/util/structures/*.json``), with
    their oxidation-state decorations removed (substitution assigns its own)."""
    spec = find_spec("pymatgen.util")
    directory = os.path.join(os.path.dirname(spec.origin), "structures")
    out = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.endswith(".json"):
            structure = Structure.from_file(os.path.join(directory, name))
            structure.remove_oxidation_states()  # some examples carry odd ones (e.g. F2- in La2CoO4F)
            if structure.is_ordered:
                stem = name[:-5].replace("(", "").replace(")", "")
                out.append(SourceStructure(id=f"pmg-{stem}", structure=structure,
                                           source={"library": "pymatgen", "example": name[:-5]}))
    return out


@lru_cache(maxsize=4096)
def _radius(element: str, oxidation: int | None) -> float | None:
    """Shannon ionic radius for an oxidation state, or the atomic radius for ``None`` (Å)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if oxidation is None:
            r = Element(element).atomic_radius
        else:
            r = Species(element, oxidation).ionic_radius
    return float(r) if r is not None else None


@lru_cache(maxsize=4096)
def allowed_oxidation_states(element: str) -> frozenset[int]:
    """Common and ICSD oxidation states of ``element``."""
    el = Element(element)
    return frozenset(el.common_oxidation_states) | frozenset(el.icsd_oxidation_states or ())


def oxidation_states(structure: Structure) -> dict[str, int] | None:
    """Most likely integer oxidation state per element, or ``None`` for a metallic/intermetallic cell."""
    if all(el.is_metal for el in structure.composition.elements):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guesses = structure.composition.oxi_state_guesses(max_sites=-50)
    if not guesses:
        return None
    return {el: int(round(q)) for el, q in guesses[0].items()}


def summed_volume(structure: Structure, oxi: dict[str, int] | None, swap: dict[str, str] | None = None
                  ) -> float | None:
    """Sum of cubed ionic radii (atomic radii for ``oxi=None``) over the sites of ``structure``, elements
    renamed by ``swap``; ``None`` when a radius is not tabulated. Ratios of it rescale substituted cells."""
    swap = swap or {}
    total = 0.0
    for el, amount in structure.composition.element_composition.items():
        name = swap.get(el.symbol, el.symbol)
        r = _radius(name, None if oxi is None else oxi[el.symbol])
        if r is None:
            return None
        total += amount * r**3
    return total


def substitute(src: SourceStructure, old: str, new: str) -> SourceStructure | None:
    """Replace every ``old`` site of ``src`` by ``new`` if charge and radius allow it (else ``None``).

    The volume is rescaled by the ratio of summed cubed radii; the substitution is recorded in ``source``.
    """
    oxi = oxidation_states(src.structure)
    q = None if oxi is None else oxi[old]
    if q is not None and q not in allowed_oxidation_states(new):
        return None
    r_old, r_new = _radius(old, q), _radius(new, q)
    if r_old is None or r_new is None or abs(r_new - r_old) / r_old > RADIUS_TOLERANCE:
        return None
    v_old = summed_volume(src.structure, oxi)
    v_new = summed_volume(src.structure, oxi, {old: new})
    if not v_old or not v_new:
        return None
    structure = src.structure.copy()
    structure.replace_species({old: new})
    structure.scale_lattice(structure.volume * v_new / v_old)
    source = dict(src.source, substitution={"from": old, "to": new, "oxidation_state": q})
    return SourceStructure(id=f"{src.id}-{old}to{new}", structure=structure, source=source)


def supported_absorbers(structure: Structure) -> list[str]:
    """The supported absorbing elements present in ``structure``."""
    present = {el.symbol for el in structure.composition.elements}
    return [el for el in ELEMENTS if el in present]


def distinct_sites(structure: Structure, element: str, symprec: float = 0.01) -> list[int]:
    """Indices of one representative site (the lowest index) per symmetry-equivalent set of ``element``
    sites, from :func:`xanes_utils.prediction.equivalent_sites`."""
    from xanes_utils.prediction import equivalent_sites  # prediction imports this module

    return sorted({group[0] for group in equivalent_sites(structure, symprec).values()
                   if structure[group[0]].specie.symbol == element})


def validate_structure(structure: Structure, name: str = "structure") -> None:
    """Raise :class:`StructureError` naming ``name`` and the problem for a structure no code here can use.

    The one check of every entry point (prediction, graphs, dataset loaders, FEFF inputs), run before
    symmetry analysis (spglib crashes the process on non-finite input): at least one site, ordered,
    finite lattice and coordinates, real elements with tabulated configurations (Z <= ``MAX_Z``), lattice
    vectors up to ``MAX_LENGTH``, and no two atoms (periodic images included) closer than ``MIN_DISTANCE``.
    """
    if len(structure) == 0:
        raise StructureError(f"{name}: the structure holds no atoms")
    if not structure.is_ordered:
        raise StructureError(f"{name}: disordered structure (partial occupancies) is not supported")
    matrix = structure.lattice.matrix
    if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(structure.frac_coords))):
        raise StructureError(f"{name}: the lattice or the atomic coordinates contain NaN or infinite values")
    for i, site in enumerate(structure):
        z = getattr(site.specie, "Z", None)
        if not isinstance(site.specie, (Element, Species)) or not 1 <= z <= MAX_Z:
            raise StructureError(f"{name}: site {i} is {site.species_string!r}, not an element with Z <= "
                                 f"{MAX_Z} (the orbital features and FEFF need a real, tabulated element)")
    longest = max(structure.lattice.abc)
    if longest > MAX_LENGTH:
        raise StructureError(f"{name}: a lattice vector of {longest:.4g} A is longer than {MAX_LENGTH:.0f} A: "
                             "not a crystal cell")
    # Packing bound: spheres of diameter MIN_DISTANCE fill at most pi / sqrt(18) of space, so a smaller
    # volume per atom means two atoms are too close.
    volume = abs(float(np.linalg.det(matrix)))
    if volume / len(structure) < MIN_DISTANCE**3 / np.sqrt(2):
        raise StructureError(f"{name}: cell volume {volume:.3g} A^3 for {len(structure)} atoms is too small: "
                             f"atoms would be closer than {MIN_DISTANCE} A (lattice lengths "
                             f"{', '.join(f'{x:.3g}' for x in structure.lattice.abc)} A)")
    distance, i, j = closest_pair(structure)
    if distance < MIN_DISTANCE:
        what = "its own periodic image" if i == j else f"site {j} ({structure[j].species_string})"
        raise StructureError(f"{name}: site {i} ({structure[i].species_string}) is {distance:.3f} A from "
                             f"{what}; atoms closer than {MIN_DISTANCE} A overlap")


def closest_pair(structure: Structure, chunk: int = 256) -> tuple[float, int, int]:
    """(distance, i, j) of the two closest atoms, periodic images included (``i == j``: an atom and its
    own image); minimum images over the LLL-reduced cell, in row chunks to bound memory."""
    lattice = structure.lattice
    shifts = np.array([v for v in itertools.product((-1, 0, 1), repeat=3) if any(v)])
    best = (float(np.linalg.norm(shifts @ lattice.lll_matrix, axis=1).min()), 0, 0)
    frac = structure.frac_coords
    for start in range(0, len(frac), chunk):
        d = lattice.get_all_distances(frac[start:start + chunk], frac)
        rows = np.arange(d.shape[0])
        d[rows, start + rows] = np.inf
        k, j = np.unravel_index(int(np.argmin(d)), d.shape)
        if d[k, j] < best[0]:
            best = (float(d[k, j]), start + int(k), int(j))
    return best


def check_structure(structure: Structure, name: str = "structure") -> None:
    """:func:`validate_structure`, and raise :class:`StructureError` if no supported absorber is present."""
    validate_structure(structure, name)
    if not supported_absorbers(structure):
        present = ", ".join(sorted(el.symbol for el in structure.composition.elements))
        raise StructureError(f"{name}: no supported transition-metal absorber (elements: {present}); "
                             f"supported: {', '.join(ELEMENTS)}")


def build_library(include_minerals: bool = True, max_sites: int = MAX_SITES) -> list[SourceStructure]:
    """All source structures plus their sensible substitutions, deduplicated, each with an absorber."""
    sources = aflow_prototypes() + (robocrys_minerals() if include_minerals else []) + pymatgen_examples()
    sources = [s for s in sources if len(s.structure) <= max_sites]
    candidates: list[SourceStructure] = []
    for src in sources:
        candidates.append(src)
        metals = [el.symbol for el in src.structure.composition.elements if el.is_metal]
        for old in metals:
            for new in ELEMENTS:
                if new != old and new not in {e.symbol for e in src.structure.composition.elements}:
                    sub = substitute(src, old, new)
                    if sub is not None:
                        candidates.append(sub)
    candidates = [c for c in candidates if supported_absorbers(c.structure)]
    return deduplicate(candidates)


def require_unique_ids(items: Sequence[SourceStructure]) -> None:
    """Raise ``ValueError`` naming the repeated ids, if any: an id names the spectra computed from a structure."""
    repeated = sorted(i for i, n in Counter(item.id for item in items).items() if n > 1)
    if repeated:
        raise ValueError(f"structure ids must be unique; repeated: {', '.join(repeated[:5])}")


def deduplicate(items: list[SourceStructure]) -> list[SourceStructure]:
    """Drop structures that StructureMatcher finds equivalent to an earlier one (first kept).

    Ids must be unique: they name the spectra computed from a structure.
    """
    require_unique_ids(items)
    matcher = StructureMatcher()
    by_formula: dict[str, list[SourceStructure]] = {}
    for item in items:
        by_formula.setdefault(item.structure.composition.reduced_formula, []).append(item)
    kept_ids = set()
    for group in by_formula.values():
        for cluster in matcher.group_structures([g.structure for g in group]):
            first = next(g for g in group if g.structure is cluster[0])
            kept_ids.add(first.id)
    return [item for item in items if item.id in kept_ids]
