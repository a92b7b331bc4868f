"""The realistic part of the library: absorbers coordinated by anions, ranked by chemical likelihood.

Real transition-metal compounds are mostly oxides, halides, sulfides, nitrides, phosphides, borides and
silicides: in the Materials Project's Cu spectra the first shell is O in 94 % of sites. The first
library (:func:`xanes_utils.structures.build_library`) is dominated by metals and intermetallics. This
module keeps, from the same sources plus robocrys' real minerals, only the absorber sites whose nearest
neighbour is a non-metal (:func:`anion_coordinated`), and ranks them: unsubstituted real compounds first,
then substitutions by pymatgen's data-mined substitution probability (Hautier et al., ICSD statistics),
so that a partial dataset holds the most likely chemistry. The ionic sources hold too few sites of the
rarer elements (Tc, Y, Zn, Sc, ...), so :func:`extended_library` derives more: one symmetry-distinct
cation site substituted at a time, at any common or ICSD oxidation state that keeps the charge balanced,
and anions exchanged within O/S/Se and F/Cl/Br/I; a structure's likelihood is then the product of its
steps' pair probabilities. Structures are relaxed with :mod:`xanes_utils.relax` when their spectra are
computed (``plan --library compounds``), which corrects the geometry of a substitution.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element, Species, Structure

from xanes_utils.elements import ELEMENTS
from xanes_utils.prediction import equivalent_sites
from xanes_utils.structures import (
    SourceStructure, StructureError, allowed_oxidation_states, check_structure, distinct_sites,
    first_shell_neighbours, oxidation_states, require_unique_ids, summed_volume,
)

log = logging.getLogger(__name__)

#: Largest cell (sites) of the compound library: relaxation and FEFF both grow with it.
MAX_COMPOUND_SITES = 40


def first_shell(structure: Structure, site: int, cutoff: float = 5.0) -> list[str]:
    """Sorted species symbols of the absorber's first shell (see :func:`first_shell_neighbours`)."""
    return sorted(nb.specie.symbol for nb in first_shell_neighbours(structure, site, cutoff))


#: A first shell of this many atoms or more is metallic-like (close packing: 12; bcc: 8 + 6 within 0.3 Å).
METALLIC_SHELL = 10


@dataclasses.dataclass(frozen=True)
class ShellStatistics:
    """First-shell chemistry of a set of absorbing sites (:func:`shell_statistics`): counts of each site's
    majority first-shell species (``"-"`` for none) and of first-shell sizes, and how many sites have a
    non-metal majority species (``anion``) or ``METALLIC_SHELL`` or more first-shell atoms (``metallic``)."""

    sites: int
    species: Counter
    coordination: Counter
    anion: int
    metallic: int

    def summary(self, n_species: int = 5, n_coordination: int = 4) -> str:
        """One line: the anion and metallic-like shares, the most common species and coordination numbers."""
        if not self.sites:
            return "0 sites"
        n = self.sites
        species = ", ".join(f"{k} {100 * v / n:.0f} %" for k, v in self.species.most_common(n_species))
        numbers = ", ".join(f"{k}: {100 * v / n:.0f} %" for k, v in self.coordination.most_common(n_coordination))
        return (f"{n} sites; anion first shell {100 * self.anion / n:.0f} %, metallic-like (>= {METALLIC_SHELL}) "
                f"{100 * self.metallic / n:.0f} %; species {species}; coordination {numbers}")


def shell_statistics(sites: Iterable[tuple[Structure, int]]) -> ShellStatistics:
    """:class:`ShellStatistics` of the first shells (:func:`first_shell`) of (structure, site) pairs."""
    species: Counter = Counter()
    numbers: Counter = Counter()
    anion = metallic = n = 0
    for structure, site in sites:
        shell = first_shell(structure, site)
        top = Counter(shell).most_common(1)[0][0] if shell else "-"
        species[top] += 1
        numbers[len(shell)] += 1
        anion += top != "-" and not Element(top).is_metal
        metallic += len(shell) >= METALLIC_SHELL
        n += 1
    return ShellStatistics(n, species, numbers, anion, metallic)


def anion_coordinated(structure: Structure, site: int) -> bool:
    """True when most of the absorber's first shell are non-metals (O, S, N, halogens, P, B, Si, C, ...)."""
    shell = first_shell(structure, site)
    return bool(shell) and sum(not Element(s).is_metal for s in shell) > len(shell) / 2


@lru_cache(maxsize=1)
def _substitution_model():
    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability

    return SubstitutionProbability()


def substitution_steps(source: dict) -> list[dict]:
    """The substitutions recorded in a ``source``: none, one (:func:`substitute`'s dict) or a list of steps
    (:func:`replace_sites`), each ``{"from", "to", "oxidation_state"[, "to_oxidation_state", "sites"]}``."""
    sub = source.get("substitution")
    if not sub:
        return []
    return [sub] if isinstance(sub, dict) else list(sub)


def _pair_probability(step: dict) -> float:
    """pymatgen's probability of the (new, old) ion pair of one substitution step (0 if a state is unknown)."""
    q = step.get("oxidation_state")
    if q is None:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(_substitution_model().prob(Species(step["to"], step.get("to_oxidation_state", q)),
                                                    Species(step["from"], q)))
        except (ValueError, KeyError):
            return 0.0


def likelihood(item: SourceStructure) -> float:
    """How chemically likely a library structure is: 1 for an unsubstituted source, else the product of
    pymatgen's substitution probabilities of the recorded (new, old) ion pairs (:func:`substitution_steps`)."""
    return float(np.prod([_pair_probability(step) for step in substitution_steps(item.source)]))


def compound_library(library: list[SourceStructure], max_sites: int = MAX_COMPOUND_SITES
                     ) -> list[SourceStructure]:
    """The ionic structures of ``library`` (an oxidation-state assignment exists) up to ``max_sites``."""
    return [item for item in library
            if len(item.structure) <= max_sites and oxidation_states(item.structure) is not None]


#: Anions that replace one another (:func:`anion_substitutions`): same charge, every pair observed in the
#: ICSD statistics of pymatgen's substitution model (Te2- and P3- never are).
ANION_FAMILIES: tuple[tuple[str, ...], ...] = (("O", "S", "Se"), ("F", "Cl", "Br", "I"))


def replace_sites(item: SourceStructure, oxi: dict[str, int], sites: Sequence[int], new: str, suffix: str
                  ) -> SourceStructure | None:
    """``item`` (an ionic structure with oxidation states ``oxi``) with ``sites`` (all of one element) taken
    by ``new`` (absent from ``item``), id ``<id><suffix>``; ``None`` unless charge balanced.

    A new anion takes the replaced anion's state, a new cation the replaced cation's if it is one of its
    common or ICSD states; otherwise the result's most likely oxidation states (:func:`oxidation_states`)
    must give the new cation such a state (another ion changing state to balance the charge). The volume is
    rescaled by the summed cubed ionic radii, as in :func:`xanes_utils.structures.substitute`. Every changed
    ion (the replaced one, and any whose state changed) is appended as a step to ``source["substitution"]``
    (:func:`substitution_steps`).
    """
    old = item.structure[sites[0]].specie.symbol
    if new in oxi:
        return None
    structure = item.structure.copy()
    for i in sites:
        structure[i] = new  # keeps the site's coordinates and properties
    q_old = oxi[old]
    if q_old < 0 or q_old in allowed_oxidation_states(new):
        new_oxi = {el: q for el, q in oxi.items() if el in structure.symbol_set} | {new: q_old}
    else:
        new_oxi = oxidation_states(structure)
        if new_oxi is None or new_oxi[new] not in allowed_oxidation_states(new):
            return None
    v_old, v_new = summed_volume(item.structure, oxi), summed_volume(structure, new_oxi)
    if not v_old or not v_new:
        return None
    structure.scale_lattice(structure.volume * v_new / v_old)
    step = {"from": old, "to": new, "oxidation_state": q_old}
    if new_oxi[new] != q_old:
        step["to_oxidation_state"] = new_oxi[new]
    if old in structure.symbol_set:
        step["sites"] = list(sites)
    changed = [{"from": el, "to": el, "oxidation_state": q, "to_oxidation_state": new_oxi[el]}
               for el, q in oxi.items() if new_oxi.get(el, q) != q]
    source = dict(item.source, substitution=substitution_steps(item.source) + [step] + changed)
    return SourceStructure(id=item.id + suffix, structure=structure, source=source)


def site_substitutions(item: SourceStructure) -> list[SourceStructure]:
    """Each symmetry-distinct set of metal sites of ``item`` taken by each absorbing element not in it
    (:func:`replace_sites`), id ``<id>-<old><first site>to<new>``: one cation site of a structure with
    several, or every site of a metal at another oxidation state or size than :func:`substitute` allows."""
    oxi = oxidation_states(item.structure)
    out = []
    for group in sorted(set(equivalent_sites(item.structure).values())) if oxi else ():
        old = item.structure[group[0]].specie
        if old.is_metal:
            for new in ELEMENTS:
                sub = replace_sites(item, oxi, group, new, f"-{old.symbol}{group[0]}to{new}")
                if sub is not None:
                    out.append(sub)
    return out


def anion_substitutions(item: SourceStructure) -> list[SourceStructure]:
    """``item`` with every site of one anion taken by another of its :data:`ANION_FAMILIES` that is not in
    it (:func:`replace_sites`; O2- to S2- or Se2-, F- to Cl-, ...), id ``<id>-<old>to<new>``."""
    oxi = oxidation_states(item.structure) or {}  # an anion is negative
    symbols = [site.specie.symbol for site in item.structure]
    out = []
    for family in ANION_FAMILIES:
        for old in family:
            sites = [i for i, symbol in enumerate(symbols) if symbol == old]
            for new in family if sites and oxi.get(old, 0) < 0 else ():
                sub = replace_sites(item, oxi, sites, new, f"-{old}to{new}")
                if sub is not None:
                    out.append(sub)
    return out


def new_structures(existing: list[SourceStructure], candidates: list[SourceStructure]) -> list[SourceStructure]:
    """The ``candidates`` that StructureMatcher finds equivalent neither to an ``existing`` structure nor to
    an earlier kept candidate (ids must be unique over both)."""
    require_unique_ids(existing + candidates)
    matcher = StructureMatcher()
    by_formula: dict[str, list[Structure]] = {}
    for item in existing:
        by_formula.setdefault(item.structure.composition.reduced_formula, []).append(item.structure)
    out = []
    for item in candidates:
        group = by_formula.setdefault(item.structure.composition.reduced_formula, [])
        if not any(matcher.fit(item.structure, other) for other in group):
            group.append(item.structure)
            out.append(item)
    return out


def extended_library(base: list[SourceStructure]) -> list[SourceStructure]:
    """New ionic structures derived from a compound library ``base`` (:func:`compound_library`): the site
    substitutions (:func:`site_substitutions`) of its unsubstituted sources, then the anion substitutions
    (:func:`anion_substitutions`) of ``base`` and of those; each valid with a supported absorber
    (:func:`xanes_utils.structures.check_structure`), and deduplicated against ``base`` and one another
    (:func:`new_structures`)."""
    sites = [sub for item in base if not substitution_steps(item.source) for sub in site_substitutions(item)]
    anions = [sub for item in base + sites for sub in anion_substitutions(item)]
    log.info("extension: %d site and %d anion substitutions of %d structures", len(sites), len(anions), len(base))
    return new_structures(base, [c for c in sites + anions if _usable(c)])


#: Non-metals that with O form the oxo-anions of polyanion compounds (borates, carbonates, nitrates, silicates,
#: phosphates, sulfates, germanates, arsenates, selenates, tellurates).
OXOANION_NONMETALS = frozenset({"B", "C", "N", "Si", "P", "S", "Ge", "As", "Se", "Te"})
#: Metals that form oxo-anions (vanadates, chromates, molybdates, tungstates) at their highest oxidation
#: states, beside another metal cation.
OXOANION_METALS = frozenset({"V", "Cr", "Mo", "W"})
#: Lowest oxidation state at which a metal of :data:`OXOANION_METALS` counts as an oxo-anion former (V5+).
OXOANION_MIN_STATE = 5


def polyanion(structure: Structure) -> bool:
    """Whether ``structure`` is a polyanion compound: O with an oxo-anion former, a non-metal of
    :data:`OXOANION_NONMETALS` or, beside another metal, a metal of :data:`OXOANION_METALS` at oxidation
    state 5 or more (ZnV2O6 is, the spinel CuCr2O4 is not)."""
    symbols = set(structure.symbol_set)
    if "O" not in symbols:
        return False
    if symbols & OXOANION_NONMETALS:
        return True
    metals = {el for el in symbols if Element(el).is_metal}
    formers = metals & OXOANION_METALS
    if not formers or len(metals) < 2:
        return False
    oxi = oxidation_states(structure) or {}
    return any(oxi.get(el, 0) >= OXOANION_MIN_STATE for el in formers)


def polyanion_library(compounds: list[SourceStructure], existing: list[SourceStructure]) -> list[SourceStructure]:
    """The polyanion compounds of an ionic library ``compounds`` (:func:`compound_library`) and their site
    substitutions (:func:`site_substitutions`, substituted sources included: their frameworks are as
    real), named as relaxed (:func:`relaxed_ids`), valid, and new against ``existing`` (by id, then by
    StructureMatcher: :func:`new_structures`), e.g. the compound plan's structures. Real compounds of
    most metals sit in polyanion frameworks (phosphates, sulfates, silicates, ...), which the prototype
    sources hold few of; this is the part of the library that the compound plan's cap left out."""
    base = [item for item in compounds if polyanion(item.structure)]
    subs = [sub for item in base for sub in site_substitutions(item)]
    known = {item.id for item in existing}
    candidates = [c for c in relaxed_ids(base + subs) if c.id not in known and _usable(c)]
    log.info("polyanions: %d compounds, %d site substitutions, %d not in the existing plan",
             len(base), len(subs), len(candidates))
    return new_structures(existing, candidates)


def _usable(item: SourceStructure) -> bool:
    """Whether :func:`xanes_utils.structures.check_structure` accepts ``item``'s structure (logged if not)."""
    try:
        check_structure(item.structure, item.id)
    except StructureError as exc:
        log.info("extension: %s dropped: %s", item.id, exc)
        return False
    return True


def compound_sites(item: SourceStructure, element: str) -> list[int]:
    """Symmetry-distinct ``element`` sites of ``item`` that are anion-coordinated."""
    return [s for s in distinct_sites(item.structure, element) if anion_coordinated(item.structure, s)]


def rank(items: list[SourceStructure], seed: int = 0) -> list[SourceStructure]:
    """``items`` by decreasing :func:`likelihood`, ties in a seeded random order."""
    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(len(items))
    order = sorted(range(len(items)), key=lambda i: (-likelihood(items[i]), tiebreak[i]))
    return [items[i] for i in order]


#: Suffix of the ids of structures that are relaxed before FEFF.
RELAXED_SUFFIX = "-relaxed"


def relaxed_ids(items: list[SourceStructure]) -> list[SourceStructure]:
    """``items`` renamed ``<id>-relaxed`` with ``source["unrelaxed_id"]``: their spectra are computed on
    the relaxed structure and must not be confused with (or split apart from) the unrelaxed ones."""
    return [dataclasses.replace(item, id=item.id + RELAXED_SUFFIX,
                                source=dict(item.source, relaxed=True, unrelaxed_id=item.id))
            for item in items]
