"""The realistic part of the library: absorbers coordinated by anions, ranked by chemical likelihood.

Real transition-metal compounds are mostly oxides, halides, sulfides, nitrides, phosphides, borides and
silicides: in the Materials Project's Cu spectra the first shell is O in 94 % of sites. The first
library (:func:`xanes_utils.structures.build_library`) is dominated by metals and intermetallics. This
module keeps, from the same sources plus robocrys' real minerals, only the absorber sites whose nearest
neighbour is a non-metal (:func:`anion_coordinated`), and ranks them: unsubstituted real compounds first,
then substitutions by pymatgen's data-mined substitution probability (Hautier et al., ICSD statistics),
so that a partial dataset holds the most likely chemistry. Structures are relaxed with
:mod:`xanes_utils.relax` when their spectra are computed (``plan --library compounds``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
from pymatgen.core import Element, Species, Structure

from xanes_utils.structures import SourceStructure, distinct_sites, oxidation_states

#: Largest cell (sites) of the compound library: relaxation and FEFF both grow with it.
MAX_COMPOUND_SITES = 40
#: Neighbours closer than this many Å beyond the nearest count as first shell.
SHELL_TOLERANCE = 0.3


def first_shell_neighbours(structure: Structure, site: int, cutoff: float = 5.0) -> list:
    """Neighbours (pymatgen ``PeriodicNeighbor``) within ``SHELL_TOLERANCE`` Å of the nearest one."""
    neighbours = structure.get_neighbors(structure[site], cutoff)
    if not neighbours:
        return []
    nearest = min(nb.nn_distance for nb in neighbours)
    return [nb for nb in neighbours if nb.nn_distance <= nearest + SHELL_TOLERANCE]


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


def likelihood(item: SourceStructure) -> float:
    """How chemically likely a library structure is: 1 for an unsubstituted source, else pymatgen's
    substitution probability of the (new, old) ion pair at the recorded oxidation state (0 if unknown)."""
    sub = item.source.get("substitution")
    if not sub:
        return 1.0
    q = sub.get("oxidation_state")
    if q is None:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(_substitution_model().prob(Species(sub["to"], q), Species(sub["from"], q)))
        except (ValueError, KeyError):
            return 0.0


def compound_library(library: list[SourceStructure], max_sites: int = MAX_COMPOUND_SITES
                     ) -> list[SourceStructure]:
    """The ionic structures of ``library`` (an oxidation-state assignment exists) up to ``max_sites``."""
    return [item for item in library
            if len(item.structure) <= max_sites and oxidation_states(item.structure) is not None]


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
