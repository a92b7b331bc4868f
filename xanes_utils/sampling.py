"""Training weights that keep near-duplicate substitutions from dominating an element's chemistry.

The library puts many metals into one prototype, so for one absorbing element the sites of a prototype
family are near duplicates (in the compound library, 32 Cu sites of YBa2Cu3O7 with Y replaced by other
metals: square-planar Cu-O sites of high valence, whose edges sit ~1 eV above those of typical Cu(II)
oxides). :func:`family_weights` gives a record the weight ``1 / sqrt(n)``, ``n`` the size of its family
(prototype or pymatgen example: :func:`xanes_utils.structures.source_family`; absorbing element; relaxed or
not) among the records weighted, so a family of n sites counts as sqrt(n) sites; and weight 0 to an
unrelaxed substitution whose CHGNet-relaxed structure is among them with the same absorbing element (the
relaxed one replaces it: the unrelaxed cell's bond lengths are the heuristic guess). The weights of each
absorbing element are then scaled to sum to its number of records kept, so the balance between elements
stays as it is. A record of no library (a user's data, real structures) is a family of its own. Used by the
ensemble's weighted bootstrap (:func:`xanes_utils.ensemble.bootstrap`).
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

from xanes_utils.dataset import Record
from xanes_utils.structures import source_family


def family(record: Record) -> tuple[str, str, bool]:
    """(prototype or example, absorbing element, relaxed) of a library record; (its id, element, False)
    otherwise."""
    source = record.source or {}
    return (source_family(source, record.id), record.element, bool(source.get("relaxed")))


def family_weights(records: Sequence[Record]) -> np.ndarray:
    """Weights [len(records)]: ``1 / sqrt(family size)``, 0 for an unrelaxed structure whose relaxed
    version is among ``records``, scaled per absorbing element to sum to its records kept (see the module
    docstring)."""
    relaxed_parents = {(r.source.get("unrelaxed_id"), r.element) for r in records
                       if r.source and r.source.get("relaxed")}
    replaced = np.array([(r.material_id, r.element) in relaxed_parents for r in records], bool)
    keys = [family(r) for r in records]
    sizes = collections.Counter(k for k, gone in zip(keys, replaced) if not gone)
    weights = np.array([0.0 if gone else 1.0 / np.sqrt(sizes[k]) for k, gone in zip(keys, replaced)])
    elements = np.array([r.element for r in records])
    for el in set(elements):
        mask = elements == el
        if weights[mask].sum() > 0:
            weights[mask] *= np.count_nonzero(weights[mask]) / weights[mask].sum()
    return weights
