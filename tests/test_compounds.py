"""The realistic (anion-coordinated) part of the structure library and its ranking."""

from __future__ import annotations

import pytest
from pymatgen.core import Composition, Lattice, Structure

from xanes_utils.compounds import (
    anion_coordinated, anion_substitutions, compound_library, compound_sites, extended_library, first_shell,
    likelihood, new_structures, polyanion, polyanion_library, rank, relaxed_ids, replace_sites, shell_statistics,
    site_substitutions,
)
from xanes_utils.structures import SourceStructure, oxidation_states, substitute


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


def olivine() -> SourceStructure:
    """Forsterite Mg2SiO4: two distinct Mg sites (M1 4a, M2 4c)."""
    s = Structure.from_spacegroup(
        "Pnma", Lattice.orthorhombic(10.19, 5.98, 4.75), ["Mg", "Mg", "Si", "O", "O", "O"],
        [[0, 0, 0], [0.2774, 0.25, 0.9915], [0.0940, 0.25, 0.4265], [0.0913, 0.25, 0.7657],
         [0.4474, 0.25, 0.2215], [0.1628, 0.0331, 0.2777]])
    return SourceStructure("olivine", s, {"library": "test"})


def delafossite() -> SourceStructure:
    """CuFeO2: Cu+ and Fe3+."""
    s = Structure.from_spacegroup("R-3m", Lattice.hexagonal(3.03, 17.17), ["Cu", "Fe", "O"],
                                  [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.1066]])
    return SourceStructure("delafossite", s, {"library": "test"})


def test_anion_substitution_keeps_the_cations_and_grows_the_cell():
    subs = {s.id: s for s in anion_substitutions(nio())}
    assert sorted(subs) == ["nio-OtoS", "nio-OtoSe"]
    sulfide = subs["nio-OtoS"]
    assert sulfide.structure.composition == Composition("Ni4S4")
    assert sulfide.structure.volume > nio().structure.volume  # S2- (1.70 A) is larger than O2- (1.26 A)
    assert sulfide.source["substitution"] == [{"from": "O", "to": "S", "oxidation_state": -2}]
    assert [s.id for s in anion_substitutions(nio())] == [s.id for s in anion_substitutions(nio())]


def test_anion_substitution_chains_after_a_cation_substitution():
    cobalt = substitute(nio(), "Ni", "Co")
    (sulfide, _) = anion_substitutions(cobalt)
    assert sulfide.id == "nio-NitoCo-OtoS" and sulfide.structure.composition.reduced_formula == "CoS"
    assert [step["to"] for step in sulfide.source["substitution"]] == ["Co", "S"]
    assert likelihood(sulfide) == pytest.approx(likelihood(cobalt) * likelihood(anion_substitutions(nio())[0]))


def test_site_substitution_replaces_one_distinct_site():
    src = olivine()
    subs = {s.id: s for s in site_substitutions(src)}
    nickel = subs["olivine-Mg0toNi"]  # M1 only: Ni2+ orders there in real (Mg,Ni)2SiO4
    assert nickel.structure.composition.reduced_composition == Composition("MgNiSiO4")
    (step,) = nickel.source["substitution"]
    assert step["from"] == "Mg" and step["to"] == "Ni" and step["oxidation_state"] == 2 and len(step["sites"]) == 4
    assert not any(key.startswith("olivine-Si") for key in subs)  # Si is not a metal
    assert "olivine-Mg0toY" not in subs  # Y3+ cannot balance the charge of Mg2+


def test_other_oxidation_state_when_another_ion_balances_the_charge():
    src = delafossite()
    fe = [i for i, site in enumerate(src.structure) if site.specie.symbol == "Fe"]
    cadmium = replace_sites(src, oxidation_states(src.structure), fe, "Cd", "-FetoCd")  # Cd has only 2+
    assert cadmium.id == "delafossite-FetoCd"
    assert cadmium.structure.composition.reduced_composition == Composition("CuCdO2")
    assert cadmium.source["substitution"] == [
        {"from": "Fe", "to": "Cd", "oxidation_state": 3, "to_oxidation_state": 2},
        {"from": "Cu", "to": "Cu", "oxidation_state": 1, "to_oxidation_state": 2}]
    assert 0 < likelihood(cadmium) < likelihood(substitute(src, "Fe", "Co"))
    assert replace_sites(nio(), {"Ni": 2, "O": -2}, [0, 1, 2, 3], "Y", "-NitoY") is None  # no Y2+


def test_likelihood_ranks_sources_then_single_then_double_substitutions():
    src = nio()
    sulfide = anion_substitutions(src)[0]
    double = anion_substitutions(substitute(src, "Ni", "Pd"))[0]
    assert likelihood(src) == 1.0 > likelihood(sulfide) > likelihood(double) > 0
    assert rank([double, sulfide, src]) == [src, sulfide, double]


def test_new_structures_drops_duplicates_of_existing_and_earlier_ones():
    src = nio()
    again = SourceStructure("nio-copy", src.structure.copy(), {})
    cobalt = substitute(src, "Ni", "Co")
    cobalt2 = SourceStructure("cobalt-copy", cobalt.structure.copy(), {})
    assert [s.id for s in new_structures([src], [again, cobalt, cobalt2])] == [cobalt.id]
    with pytest.raises(ValueError, match="unique"):
        new_structures([src], [src])


def test_extended_library_derives_from_sources_and_substitutions():
    src = nio()
    base = [src, substitute(src, "Ni", "Co")]
    ids = [s.id for s in extended_library(base)]
    assert ids == [s.id for s in extended_library(base)]
    assert {"nio-OtoS", "nio-NitoCo-OtoS", "nio-Ni0toZn"} <= set(ids)
    assert "nio-Ni0toCo" not in ids  # a duplicate of nio-NitoCo


def test_polyanion_compounds_are_told_from_plain_oxides():
    assert polyanion(olivine().structure)  # SiO4 units
    assert not polyanion(nio().structure) and not polyanion(nial().structure)
    assert not polyanion(delafossite().structure)  # CuFeO2: a mixed oxide without an oxo-anion former
    lattice = Lattice.cubic(10.0)  # compositions matter here, not geometry
    vanadate = Structure(lattice, ["Zn"] + ["V"] * 2 + ["O"] * 6, [[i / 9, 0, 0] for i in range(9)])  # ZnV2O6: V5+
    spinel = Structure(lattice, ["Cu"] + ["Cr"] * 2 + ["O"] * 4, [[i / 7, 0, 0] for i in range(7)])  # CuCr2O4: Cr3+
    v2o5 = Structure(lattice, ["V"] * 2 + ["O"] * 5, [[i / 7, 0, 0] for i in range(7)])
    assert polyanion(vanadate) and not polyanion(spinel) and not polyanion(v2o5)


def test_polyanion_library_keeps_new_frameworks_and_their_substitutions():
    library = polyanion_library([olivine(), nio()], existing=relaxed_ids([nio()]))
    ids = [item.id for item in library]
    # forsterite itself has no absorbing element; its substitutions do; NiO is no polyanion compound
    assert "olivine-relaxed" not in ids and not any(i.startswith("nio") for i in ids)
    assert "olivine-Mg0toNi-relaxed" in ids and "olivine-Mg4toNi-relaxed" in ids
    assert all(item.source["relaxed"] and polyanion(item.structure) for item in library)
    # a structure already planned (by id) is not planned again
    (nickel,) = [item for item in site_substitutions(olivine()) if item.id == "olivine-Mg0toNi"]
    again = polyanion_library([olivine()], existing=relaxed_ids([nickel]))
    assert "olivine-Mg0toNi-relaxed" not in [item.id for item in again] and len(again) == len(library) - 1
