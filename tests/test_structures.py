"""Structure library: symmetry-distinct sites, charge- and radius-aware substitution, deduplication."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from xanes_utils.structures import (
    SourceStructure, aflow_prototypes, deduplicate, distinct_sites, oxidation_states, substitute,
)


def rocksalt(metal="Ni", a=4.17):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5] * 3])


def test_distinct_sites_use_symmetry():
    nio = rocksalt()
    assert len(nio) == 8 and distinct_sites(nio, "Ni") == [0]
    # Spinel AB2O4 (origin choice 1: A at 8a, B at 16d, O at 32e): tetrahedral A and octahedral B sites
    # are two distinct classes.
    spinel = Structure.from_spacegroup(
        "Fd-3m", Lattice.cubic(8.4), ["Fe", "Co", "O"], [[0, 0, 0], [0.625] * 3, [0.3875] * 3])
    assert len(distinct_sites(spinel, "Fe")) == 1 and len(distinct_sites(spinel, "Co")) == 1
    assert spinel.composition["Fe"] > 1 and spinel.composition["Co"] > 1


def test_substitution_is_charge_balanced_with_sensible_volume():
    src = SourceStructure("nio", rocksalt())
    co = substitute(src, "Ni", "Co")
    assert co is not None and co.source["substitution"] == {"from": "Ni", "to": "Co", "oxidation_state": 2}
    assert sum(q * n for q, n in zip(oxidation_states(co.structure).values(),
                                      co.structure.composition.values())) == 0
    # Co2+ is larger than Ni2+ (Shannon 0.885 vs 0.83 Å): the cell grows, by a few per cent only.
    assert 1.0 < co.structure.volume / src.structure.volume < 1.15
    # Cd2+ (1.09 Å) differs from Ni2+ by more than the tolerance; Sc has no 2+ state.
    assert substitute(src, "Ni", "Cd") is None
    assert substitute(src, "Ni", "Sc") is None


def test_metallic_substitution_uses_atomic_radii():
    fcc = Structure(Lattice.cubic(3.52), ["Ni"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    assert oxidation_states(fcc) is None
    pd = substitute(SourceStructure("ni-fcc", fcc), "Ni", "Pd")
    assert pd is not None
    assert pd.structure.volume / fcc.volume == pytest.approx((1.4 / 1.35) ** 3, rel=1e-6)


def test_deduplicate_keeps_first_of_equivalent_structures():
    a = SourceStructure("a", rocksalt())
    b = SourceStructure("b", rocksalt().get_primitive_structure())
    c = SourceStructure("c", rocksalt("Co", 4.26))
    assert [s.id for s in deduplicate([a, b, c])] == ["a", "c"]
    with pytest.raises(ValueError, match="repeated: a"):
        deduplicate([a, SourceStructure("a", rocksalt("Co", 4.26))])


def test_aflow_library_is_packaged_and_ordered():
    protos = aflow_prototypes()
    assert len(protos) > 250
    assert all(p.structure.is_ordered for p in protos)
    assert all(p.source["library"] == "aflow" for p in protos)
    # labels repeat in the library (marcasite and CaCl2 share AB2_oP6_58_a_g); ids must not
    assert len({p.id for p in protos}) == len(protos)
    assert {"aflow-AB2_oP6_58_a_g-FeS2", "aflow-AB2_oP6_58_a_g-CaCl2"} <= {p.id for p in protos}


def test_pymatgen_examples_are_packaged_ordered_and_unique():
    from xanes_utils.structures import pymatgen_examples

    examples = pymatgen_examples()
    ids = [e.id for e in examples]
    assert len(ids) == len(set(ids)) and "pmg-TiO2" in ids
    assert all(e.structure.is_ordered and e.source["library"] == "pymatgen" for e in examples)
    for e in examples:  # undecorated, so charge balancing works on every one (raised for La2CoO4F before)
        assert all(type(sp).__name__ == "Element" for sp in e.structure.composition)
        oxidation_states(e.structure)


def test_mineral_database_reader_on_a_split_table(tmp_path):
    import pandas as pd

    from xanes_utils.structures import robocrys_minerals

    nio = rocksalt()
    disordered = rocksalt()
    disordered.replace_species({"Ni": {"Ni": 0.5, "Co": 0.5}})
    table = pd.DataFrame({"structure": [nio.as_dict(), disordered.as_dict()],
                          "mineral": ["Bunsenite", "Mixed"], "n_elems": [2, 3]})
    path = tmp_path / "mineral_db.json.gz"
    table.to_json(path, orient="split", compression="gzip")
    minerals = robocrys_minerals(str(path))
    assert [m.source["mineral"] for m in minerals] == ["Bunsenite"]
    assert minerals[0].structure.composition.reduced_formula == "NiO"
