"""CHGNet relaxation of library structures: a compressed cell relaxes, implausible results are refused
(a runaway volume as soon as it leaves the accepted range)."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from xanes_utils.relax import MAX_STEPS, RelaxError, relax_structure


def rocksalt(a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Ni", "O"], [[0, 0, 0], [0.5] * 3])


def test_expanded_nio_relaxes_towards_experiment():
    relaxed, info = relax_structure(rocksalt(4.6), name="NiO")
    a = relaxed.lattice.abc[0]
    assert 4.05 < a < 4.35  # experiment 4.18 A; started 10 % too large
    assert info.volume_change < -0.15 and info.steps > 0 and info.max_force <= 0.1
    assert info.energy_per_atom < info.initial_energy_per_atom
    assert [s.specie.symbol for s in relaxed] == [s.specie.symbol for s in rocksalt(4.6)]  # order kept


def test_unconverged_relaxation_is_refused_with_the_name():
    with pytest.raises(RelaxError, match="squeezed: implausible relaxation: not converged"):
        relax_structure(rocksalt(3.0), name="squeezed", steps=2)


def test_runaway_volume_is_stopped_early():
    with pytest.raises(RelaxError, match=r"swollen: implausible relaxation: volume changed by -\d+ % after (\d+) steps") as err:
        relax_structure(rocksalt(6.0), name="swollen")  # 3x NiO's volume: collapses by two thirds
    steps = int(err.value.args[0].split(" after ")[1].split()[0])
    assert 0 < steps < MAX_STEPS
