"""The realistic (anion-coordinated) part of the structure library and its ranking."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

from xanes_utils.compounds import (
    anion_coordinated, compound_library, compound_sites, first_shell, likelihood, rank, relaxed_ids,
    shell_statistics,
)
from xanes_utils.structures import SourceStructure, substitute


def nio() -> SourceStructure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.17), ["Ni", "O"], [[0, 0, 0], [0.5] * 3])
    return SourceStructure("nio", s, {"library": "test"})


def nial() -> SourceStructure:
    s = Structure.from_spacegroup("Pm-3m", Lattice.cubic(2.88), ["Ni", "Al"], [[0, 0, 0], [0.5] * 3])
    return SourceStructure("nial", s, {"library": "test"})


def test_first_shell_and_anion_coordination():
    assert first_shell(nio().structure, 0) == ["O"] * 6
    assert anion_coordinated(nio().structure, 0)
    assert not anion_coordinated(nial().structure, 0)  # 8 Al: a metallic first shell


def test_shell_statistics_count_majority_species_and_coordination():
    cu = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]])
    stats = shell_statistics([(nio().structure, 0), (nio().structure, 0), (nial().structure, 0), (cu, 0)])
    assert stats.sites == 4 and stats.anion == 2 and stats.metallic == 1  # fcc Cu: 12; NiAl: 8 Al
    assert stats.species == {"O": 2, "Al": 1, "Cu": 1} and stats.coordination == {6: 2, 8: 1, 12: 1}
    assert stats.summary(n_species=1, n_coordination=1) == (
        "4 sites; anion first shell 50 %, metallic-like (>= 10) 25 %; species O 50 %; coordination 6: 50 %")
    assert shell_statistics([]).summary() == "0 sites"


def test_library_keeps_ionic_structures_and_their_anion_coordinated_sites():
    kept = compound_library([nio(), nial()])
    assert [k.id for k in kept] == ["nio"]
    assert compound_sites(kept[0], "Ni") == [0]


def test_ranking_puts_sources_first_then_likely_substitutions():
    src = nio()
    cobalt, zinc, palladium = (substitute(src, "Ni", el) for el in ("Co", "Zn", "Pd"))
    assert likelihood(src) == 1.0
    assert 0 < likelihood(palladium) < likelihood(cobalt) < 1  # Co2+ replaces Ni2+ far more often than Pd2+
    ranked = rank([palladium, cobalt, src, zinc])
    assert ranked[0] is src and ranked.index(cobalt) < ranked.index(palladium)


def test_relaxed_ids_keep_the_parent():
    (item,) = relaxed_ids([nio()])
    assert item.id == "nio-relaxed" and item.source["unrelaxed_id"] == "nio" and item.source["relaxed"]
