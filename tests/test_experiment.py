"""Measured reference spectra, their published structures, and the leave-one-out comparison."""

from __future__ import annotations

import numpy as np
import pytest

from xanes_utils import experiment
from xanes_utils.elements import energy_grid
from xanes_utils.experiment import Measured


def test_every_measured_compound_has_a_structure_or_a_reason():
    measured = experiment.load_measured()
    assert len(measured) == 24 and {m.element for m in measured} <= set(experiment.ELEMENTS)
    for m in measured:
        assert (m.formula in experiment.REFERENCE_STRUCTURES) != (m.formula in experiment.SKIPPED), m.formula


@pytest.mark.parametrize("formula, n, low, high", [
    ("CuO", 4, 1.94, 1.97),      # square-planar Cu(II): 1.95, 1.96 A
    ("ZnO", 4, 1.97, 1.99),      # tetrahedral
    ("LiCoO2", 6, 1.91, 1.93),   # Co on 3b, O on 6c: Co-O 1.92 A
    ("Fe2O3", 6, 1.94, 2.12),    # 3 short + 3 long
    ("VO2", 6, 1.75, 2.07),      # distorted M1 octahedron with the short vanadyl bond
])
def test_published_structures_have_their_first_shells(formula, n, low, high):
    structure = experiment.REFERENCE_STRUCTURES[formula].structure()
    assert structure.composition.reduced_formula == formula
    element = experiment.absorber_element(formula)
    site = next(i for i, s in enumerate(structure) if s.specie.symbol == element)
    shell = sorted(nb.nn_distance for nb in structure.get_neighbors(structure[site], 2.3))
    assert len(shell) == n and low <= shell[0] and shell[-1] <= high


#: Z and, per bond-valence oxidation state of the absorber, its first-shell Cr/Mn-O bands (count, low, high
#: in Å) in order of distance: Mn3O4 (Jarosch 1987) tetrahedral Mn2+ 4 x 2.04, Jahn-Teller octahedral Mn3+
#: 4 x 1.93 + 2 x 2.28; K2Cr2O7 (Weakley et al. 2004) three terminal Cr-O 1.60-1.62 and one bridging 1.78-1.79.
ADDED_SHELLS = {
    "Mn3O4": (4, {2: [(4, 2.03, 2.05)], 3: [(4, 1.92, 1.94), (2, 2.27, 2.30)]}),
    "K2Cr2O7": (4, {6: [(3, 1.59, 1.63), (1, 1.77, 1.80)]}),
}


@pytest.mark.parametrize("formula", sorted(ADDED_SHELLS))
def test_added_structures_are_neutral_and_have_their_published_first_shells(formula):
    from pymatgen.analysis.bond_valence import BVAnalyzer

    from xanes_utils.structures import closest_pair

    z, bands = ADDED_SHELLS[formula]
    structure = experiment.REFERENCE_STRUCTURES[formula].structure()
    assert structure.composition.get_reduced_formula_and_factor() == (formula, z)
    assert closest_pair(structure)[0] > 1.5  # no overlapping atoms: the shortest bond is Cr-O ~1.60 A
    valences = BVAnalyzer().get_valences(structure)
    assert sum(valences) == 0
    seen = set()
    for site, _ in experiment.absorber_sites(structure, experiment.absorber_element(formula)):
        seen.add(valences[site])
        shell = sorted(nb.nn_distance for nb in structure.get_neighbors(structure[site], 2.5))
        assert len(shell) == sum(n for n, _, _ in bands[valences[site]]), (site, shell)
        start = 0
        for n, low, high in bands[valences[site]]:
            assert all(low <= d <= high for d in shell[start:start + n]), (site, shell)
            start += n
    assert seen == set(bands)


def test_sites_and_multiplicity_weighted_average():
    sites = experiment.absorber_sites(experiment.REFERENCE_STRUCTURES["Mn2O3"].structure(), "Mn")
    assert sorted(m for _, m in sites) == [8, 24]
    sites = experiment.absorber_sites(experiment.REFERENCE_STRUCTURES["Mn3O4"].structure(), "Mn")
    assert sorted(m for _, m in sites) == [4, 8]
    avg = experiment.site_average([np.zeros(3), np.ones(3)], [8, 24])
    assert np.allclose(avg, 0.75)


def synthetic(id_: str, formula: str, offset: float) -> Measured:
    """A measured 'Cu' edge at 9000 eV + offset: sigmoid, on the experiment's own energy axis."""
    energy = np.linspace(8970, 9045, 200)
    return Measured(id_, "Cu", formula, id_, energy, 1 / (1 + np.exp(-(energy - 9000 - offset) / 1.5)))


def test_best_shift_and_leave_one_out():
    grid = energy_grid("Cu")
    feff = 1 / (1 + np.exp(-(grid - 9000) / 1.5))  # FEFF's edge at 9000 eV
    a, b, c = synthetic("a", "X", -3.0), synthetic("b", "Y", -2.0), synthetic("c", "Y", -2.0)
    assert experiment.best_shift(a, feff) == pytest.approx(3.0, abs=0.13)
    shifts = experiment.loo_shifts([a, b, c], {"a": feff, "b": feff, "c": feff})
    assert shifts["a"] == pytest.approx(2.0, abs=0.13)  # from b and c only
    assert shifts["b"] == pytest.approx(3.0, abs=0.13)  # c is the same compound: left out with b
    rows = experiment.compare([a, b], {"a": feff, "b": feff}, {"a": feff, "b": feff}, {"Cu": np.full_like(grid, 0.5)})
    assert rows[0]["feff_mse"] == rows[0]["model_mse"] and rows[0]["mse_ratio"] == 1.0
    assert rows[0]["baseline_mse"] > 10 * rows[0]["model_mse"]
    with pytest.raises(ValueError, match="a: a leave-one-out shift needs another"):
        experiment.compare([a], {"a": feff}, {"a": feff}, {"Cu": feff})
    # the band is rescaled with the model curve: 2 x the curve is 2 x the min-max span, so σ halves
    model = {"a": 2 * feff, "b": 2 * feff}
    rows = experiment.compare([a, b], {"a": feff, "b": feff}, model, {"Cu": feff},
                              model_std={"a": np.full_like(grid, 0.1), "b": np.full_like(grid, 0.1)})
    window = np.isfinite(rows[0]["experiment"])
    span = np.ptp(2 * feff[window])
    assert np.allclose(rows[0]["model_std"][window], 0.1 / span) and np.isnan(rows[0]["model_std"][~window]).all()
    assert np.allclose(rows[0]["model"][window], rows[0]["feff"][window])


def test_metrics_by_hand():
    m = experiment.metrics(np.array([0.0, 1.0, np.nan, 2.0]), np.array([0.0, 1.0, 5.0, 1.0]))
    assert m["mse"] == pytest.approx(1 / 3) and m["spearman"] == pytest.approx(0.866, abs=1e-3)
    assert m["cosine"] == pytest.approx(3 / (np.sqrt(5) * np.sqrt(2)))
