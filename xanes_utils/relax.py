"""Relax library structures with CHGNet, a universal interatomic potential whose weights ship in its wheel.

Substituted prototypes keep the parent's geometry with a heuristically rescaled volume, so bond lengths
can be off by several per cent, which moves XANES features. :func:`relax_structure` relaxes atoms and
cell (FIRE, ``fmax`` eV/Å) on the CPU, offline, and refuses implausible results (not converged, a
volume change beyond ``MAX_VOLUME_CHANGE``, atoms closer than ``MIN_DISTANCE``, non-finite energy) with a
:class:`RelaxError` that names the structure and the problem. A relaxation whose volume leaves the accepted
range is stopped at that step: a collapsing cell gathers ever more neighbours within the potential's cutoff,
so its steps grow slower and its memory larger (a 28-atom phosphate's steps slowed from 0.8 to 3.5 s by a
quarter of its volume, and its worker held 8 GB) for a result that would be refused anyway. CHGNet (Modified BSD licence) is a
dependency: the ensemble that ``predict`` ships also reads its site embeddings
(:mod:`xanes_utils.site_embeddings`).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from pymatgen.core import Structure

from xanes_utils.structures import closest_pair

log = logging.getLogger(__name__)

#: Largest force (eV/Å) at convergence.
FMAX = 0.1
#: Most optimiser steps.
MAX_STEPS = 400
#: Largest accepted relative volume change.
MAX_VOLUME_CHANGE = 0.35
#: Smallest accepted interatomic distance after relaxation (Å).
MIN_DISTANCE = 0.7


class RelaxError(RuntimeError):
    """A relaxation that failed or gave an implausible structure."""


@dataclass(frozen=True)
class Relaxation:
    """Outcome of one relaxation: energies in eV/atom, volumes in Å^3, ``steps`` of the optimiser."""

    energy_per_atom: float
    initial_energy_per_atom: float
    steps: int
    max_force: float
    initial_volume: float
    final_volume: float
    model: str

    @property
    def volume_change(self) -> float:
        """Relative volume change (final / initial - 1)."""
        return self.final_volume / self.initial_volume - 1.0

    def as_dict(self) -> dict:
        """JSON-able summary, including the volume change."""
        return asdict(self) | {"volume_change": self.volume_change}


@lru_cache(maxsize=1)
def _calculator():
    """CHGNet's pretrained model as an ASE calculator on the CPU (loaded once per process) and its name."""
    try:
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator
    except ImportError as exc:
        raise RelaxError("relaxation needs CHGNet: pip install chgnet") from exc
    model = CHGNet.load(use_device="cpu", verbose=False)
    return CHGNetCalculator(model=model, use_device="cpu"), f"CHGNet {model.version}"


class _VolumeRunaway(Exception):
    """Raised inside the optimiser when the cell volume leaves the accepted range."""


def _fire(structure: Structure, fmax: float, steps: int) -> tuple[Structure, Any]:
    """FIRE on atoms and cell (ASE's ``FrechetCellFilter``), as CHGNet's ``StructOptimizer.relax`` runs it,
    stopped with :class:`_VolumeRunaway` once the volume leaves ``MAX_VOLUME_CHANGE``; returns the final
    structure (with CHGNet's magnetic moments as ``magmom``) and the trajectory (energies, forces per step)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from chgnet.model.dynamics import TrajectoryObserver
    from pymatgen.io.ase import AseAtomsAdaptor

    calculator, _ = _calculator()
    atoms = AseAtomsAdaptor().get_atoms(structure)
    atoms.calc = calculator
    trajectory = TrajectoryObserver(atoms)
    optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
    initial = atoms.get_volume()

    def guard() -> None:
        change = atoms.get_volume() / initial - 1.0
        if abs(change) > MAX_VOLUME_CHANGE:
            raise _VolumeRunaway(f"volume changed by {100 * change:+.0f} % after {optimizer.nsteps} steps; "
                                 "stopped")

    optimizer.attach(trajectory)
    optimizer.attach(guard)
    optimizer.run(fmax=fmax, steps=steps)
    trajectory()
    final = AseAtomsAdaptor.get_structure(atoms)
    for key in list(final.site_properties):
        final.remove_site_property(key)
    final.add_site_property("magmom", [float(m) for m in atoms.get_magnetic_moments()])
    return final, trajectory


def relax_structure(structure: Structure, name: str = "structure", fmax: float = FMAX,
                    steps: int = MAX_STEPS) -> tuple[Structure, Relaxation]:
    """Relax atoms and cell of ``structure``; return the relaxed structure and its :class:`Relaxation`.

    Site order is kept, so absorber indices stay valid. Raises :class:`RelaxError` for a failed or
    implausible relaxation (see the module docstring).
    """
    _, model_name = _calculator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            final, trajectory = _fire(structure.copy(), fmax, steps)
        except _VolumeRunaway as exc:
            raise RelaxError(f"{name}: implausible relaxation: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - ASE/CHGNet raise many types
            raise RelaxError(f"{name}: relaxation failed ({type(exc).__name__}: {exc})") from exc
    n = len(structure)
    forces = trajectory.forces[-1]
    max_force = float(max(math.sqrt(sum(c * c for c in f)) for f in forces))
    info = Relaxation(
        energy_per_atom=float(trajectory.energies[-1]) / n,
        initial_energy_per_atom=float(trajectory.energies[0]) / n,
        steps=len(trajectory.energies) - 1,
        max_force=max_force,
        initial_volume=float(structure.volume),
        final_volume=float(final.volume),
        model=model_name,
    )
    problems = []
    if not math.isfinite(info.energy_per_atom):
        problems.append("non-finite energy")
    if max_force > fmax * 1.0001 or info.steps >= steps:  # the cell's stress counts in the optimiser's fmax
        problems.append(f"not converged in {steps} steps (largest atomic force {max_force:.2f} eV/A)")
    dmin = closest_pair(final)[0]
    if dmin < MIN_DISTANCE:
        problems.append(f"atoms {dmin:.2f} A apart after relaxation")
    if problems:
        raise RelaxError(f"{name}: implausible relaxation: {'; '.join(problems)}")
    log.debug("%s relaxed in %d steps, volume %+.1f %%", name, info.steps, 100 * info.volume_change)
    return final, info

