"""The 20 absorbing elements and the paper's 111-point energy grid."""

from __future__ import annotations

import numpy as np

#: Absorbing elements of the family-bucket model, in atomic-number order (3d row, then 4d row).
ELEMENTS: tuple[str, ...] = (
    "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd",
)

#: First grid energy per element (eV), as used by the paper.
E_START: dict[str, float] = {
    "Sc": 4490, "Ti": 4965, "V": 5465, "Cr": 5990, "Mn": 6539,
    "Fe": 7112, "Co": 7710, "Ni": 8333, "Cu": 8984, "Zn": 9661,
    "Y": 17050, "Zr": 18010, "Nb": 18998, "Mo": 20016, "Tc": 21062,
    "Ru": 22135, "Rh": 23238, "Pd": 24371, "Ag": 25538, "Cd": 26739,
}

N_POINTS = 111
STEP_EV = 0.5


class UnsupportedElementError(ValueError):
    """Raised for an absorbing element outside the 20 supported transition metals."""


def check_element(element: str) -> str:
    """Return ``element`` if it is one of the 20 supported absorbers, else raise."""
    if element not in E_START:
        raise UnsupportedElementError(
            f"unsupported absorbing element {element!r}: the model covers only {', '.join(ELEMENTS)}"
        )
    return element


def energy_grid(element: str) -> np.ndarray:
    """The paper's grid for ``element``: E_start + 0.5 eV * i, i = 0..110 (eV)."""
    return E_START[check_element(element)] + STEP_EV * np.arange(N_POINTS)


def period(element: str) -> int:
    """Period of a supported absorber: 4 for the 3d row, 5 for the 4d row."""
    return 4 if ELEMENTS.index(check_element(element)) < 10 else 5
