"""What the loaders share: their errors, the checks every entry passes, and reading files.

A problem with one entry (unsupported element, disordered structure, NaN or non-monotonic spectrum,
wrong energy grid, missing file) skips that entry with a logged warning naming the file and the entry;
with ``strict=True`` it raises :class:`DataError` instead. A file that cannot be parsed at all raises
:class:`~xanes_utils.io.CorruptFileError`. Both are ``ValueError`` subclasses whose message starts with
the file's path.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from xanes_utils.dataset import Record
from xanes_utils.elements import check_element, energy_grid
from xanes_utils.feff import to_grid
from xanes_utils.io import CorruptFileError
from xanes_utils.structures import check_structure, validate_structure

log = logging.getLogger(__name__)

#: Range of the mean of the last 10 grid points accepted as "edge-step normalised".
NORMALISED_TAIL = (0.2, 5.0)
#: Suffixes of pickle-based files, which are loaded only when explicitly trusted.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle")
_SPECTRUM_ID = re.compile(r"^(?P<material>.+?)-(?P<site>\d+)-(?P<element>[A-Z][a-z]?)-XANES-K$")


class DataError(ValueError):
    """An input entry or file that cannot become a :class:`Record`; the message names file and problem."""


class UnsafeFileError(DataError):
    """A pickle-based file (``.pt``/``.pkl``) offered without ``trust=True``."""


def _skip(where: str, exc: Exception | str, strict: bool) -> None:
    """Raise :class:`DataError` for ``where`` (strict) or log that it is skipped, with the reason."""
    reason = str(exc)
    if strict:
        raise DataError(f"{where}: {reason}") from (exc if isinstance(exc, Exception) else None)
    log.warning("skipped %s: %s", where, reason)


def _text(value: Any, name: str, enum: bool = False) -> str:
    """A short string from a JSON value: plain strings, pymatgen ``Element``/enum/MPID dicts.

    With ``enum``, a Python enum's ``str`` (``"Edge.K"``) gives its value (``"K"``).
    """
    if isinstance(value, dict):
        for key in ("element", "value", "symbol", "string"):
            if isinstance(value.get(key), str):
                return value[key]
        raise DataError(f"{name}: cannot read a name from {_short(value)}")
    if isinstance(value, str) and value.strip():
        return value.strip().rsplit(".", 1)[-1] if enum else value.strip()
    raise DataError(f"{name}: expected a string, got {_short(value)}")


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _index(value: Any, name: str = "absorbing_index") -> int:
    """A non-negative integer site index (ints, integral floats, digit strings; never bools)."""
    if hasattr(value, "item") and hasattr(value, "dtype"):
        value = value.item()  # numpy / torch scalar
    if isinstance(value, bool):
        raise DataError(f"{name}: expected an integer, got {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise DataError(f"{name}: expected a non-negative integer, got {_short(value)}")
    return value


def _floats(value: Any, name: str) -> np.ndarray:
    """A 1-D float array from a list, a numpy/torch array or monty's encoded numpy dict."""
    if isinstance(value, dict) and "data" in value:
        value = value["data"]
    if hasattr(value, "tolist") and not isinstance(value, (list, str)):
        value = value.tolist()
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise DataError(f"{name}: expected a list of numbers, got {_short(value)}")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: not a list of numbers ({exc})") from exc
    if arr.ndim != 1:
        raise DataError(f"{name}: expected a 1-D list of numbers, got shape {arr.shape}")
    return arr


def _structure(value: Any, name: str = "structure") -> Structure:
    """A checked pymatgen structure from its dict (``Structure.as_dict``), as a ``ValueError`` if unusable."""
    if isinstance(value, Structure):
        structure = value
    elif not isinstance(value, dict):
        raise DataError(f"{name}: expected a pymatgen structure dict, got {_short(value)}")
    else:
        if "lattice" not in value and isinstance(value.get("structure"), dict):
            value = value["structure"]  # SymmetrizedStructure (site-averaged MP spectra) wraps the structure
        try:
            structure = Structure.from_dict(value)
        except Exception as exc:  # noqa: BLE001 - pymatgen's parser raises many types on malformed input
            raise DataError(f"{name}: unreadable pymatgen structure ({type(exc).__name__}: {exc})") from exc
    validate_structure(structure, name)
    return structure


def _absorber(structure: Structure, site: int, element: str) -> None:
    """Check that ``structure`` is usable and ``site`` is an ``element`` site of it."""
    check_structure(structure)
    if site >= len(structure):
        raise DataError(f"absorbing_index {site} is out of range for a structure of {len(structure)} sites")
    found = structure[site].specie.symbol
    if found != element:
        raise DataError(f"site {site} of the structure is {found}, not the absorbing element {element}")


def _check_normalised(mu: np.ndarray) -> None:
    tail = float(np.mean(mu[-10:]))
    low, high = NORMALISED_TAIL
    if not low < tail < high:
        raise DataError(f"spectrum does not look edge-step normalised (mean of the last 10 grid points "
                        f"{tail:.3g}, expected about 1)")


def _on_grid(energy: np.ndarray, mu: np.ndarray, element: str) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate a raw spectrum onto the paper's grid, rejecting wrong grids and unnormalised spectra."""
    if energy.shape != mu.shape:
        raise DataError(f"energy ({energy.size} points) and mu ({mu.size} points) differ in length")
    grid = energy_grid(element)
    if energy.size and np.isfinite(energy[0]) and energy[0] > grid[len(grid) // 2]:
        raise DataError(f"spectrum starts at {energy[0]:.1f} eV, after the {element} grid midpoint "
                        f"({grid[len(grid) // 2]:.1f} eV): wrong element or edge?")
    if not np.all(np.isfinite(energy)):
        raise DataError("energies contain NaN or infinite values")
    grid, y = to_grid(energy, mu, element)
    _check_normalised(y)
    return grid, y


def _record(*, id: str, element: str, site: int, structure: Structure, energy: np.ndarray, mu: np.ndarray,
            source: dict, material_id: str) -> Record:
    """Validate everything and build one :class:`Record` on the paper's grid."""
    element = check_element(element)
    _absorber(structure, site, element)
    grid, y = _on_grid(energy, mu, element)
    return Record(id=id, element=element, site=site, structure_dict=structure.as_dict(), energy=grid, mu=y,
                  source=source, material_id=material_id)


def _read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped for ``.gz``; unreadable data raise :class:`CorruptFileError`."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError) as exc:
        raise CorruptFileError(f"{path}: corrupt or truncated file ({exc})") from exc


def _read_text(path: Path) -> str:
    try:
        return _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path}: not UTF-8 text ({exc})") from exc


def _json_file(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except ValueError as exc:
        raise CorruptFileError(f"{path}: malformed or truncated JSON ({exc})") from exc
