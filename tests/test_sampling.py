"""Family weights: near-duplicate substitutions count less, relaxed structures replace their parents."""

from __future__ import annotations

import numpy as np
import pytest

from xanes_utils.dataset import Record
from xanes_utils.sampling import family, family_weights


def record(rid: str, element: str, prototype: str | None = None, relaxed: bool = False,
           parent: str = "") -> Record:
    source = {"library": "aflow", "prototype": prototype} if prototype else {}
    if relaxed:
        source.update(relaxed=True, unrelaxed_id=parent)
    material = rid.rsplit("-", 1)[0]
    return Record(id=rid, element=element, site=0, structure_dict={}, energy=np.zeros(2), mu=np.zeros(2),
                  source=source, material_id=material)


def test_family_of_a_library_record_and_of_a_user_record():
    assert family(record("p-MtoCu-0", "Cu", "P")) == ("P", "Cu", False)
    example = record("pmg-LiFePO4-FetoCu-0", "Cu")
    example.source = {"library": "pymatgen", "example": "LiFePO4"}
    assert family(example) == ("LiFePO4", "Cu", False)
    assert family(record("mine-0", "Cu")) == ("mine-0", "Cu", False)


def test_weights_by_hand():
    records = [record(f"ybco-{m}-0", "Cu", "YBCO") for m in "abcd"]  # a family of 4 Cu sites
    records += [record("tenorite-0", "Cu", "CuO"), record("spinel-0", "Fe", "MgAl2O4")]
    records += [record("spinel-relaxed-0", "Fe", "MgAl2O4", relaxed=True, parent="spinel")]
    w = family_weights(records)
    # the unrelaxed spinel is replaced by its relaxed twin; Cu: four sites of 1/2 and one of 1, scaled to sum 5
    assert w[5] == 0.0 and w[6] == pytest.approx(1.0)
    assert w[:4] == pytest.approx([5 / 3 / 2] * 4) and w[4] == pytest.approx(5 / 3)
    assert w[:5].sum() == pytest.approx(5.0)


def test_a_relaxed_twin_of_another_element_replaces_nothing():
    records = [record("x-0", "Ni", "P"), record("x-relaxed-1", "O", "P", relaxed=True, parent="x")]
    assert family_weights(records).tolist() == [1.0, 1.0]
