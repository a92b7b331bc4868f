"""The list format of the paper's authors: JSON, CSV or, only when explicitly trusted, their pickled
torch ``.pt`` file, with one pymatgen-JSON structure per material."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from xanes_utils.dataset import Record
from xanes_utils.elements import E_START, N_POINTS, check_element, energy_grid
from xanes_utils.io import CorruptFileError
from xanes_utils.loaders.common import (
    DataError, PICKLE_SUFFIXES, UnsafeFileError, _SPECTRUM_ID, _absorber, _check_normalised, _floats, _index,
    _json_file, _read_text, _short, _skip, _structure, _text,
)

log = logging.getLogger(__name__)

#: Header row of the authors' list format.
AUTHORS_HEADER = ("spectrum_id", "absorbing_element", "absorbing_index", "startpoint", "y")
#: Largest accepted difference between an authors' ``startpoint`` and the paper's E_start (eV).
STARTPOINT_TOLERANCE = 0.5


def _authors_rows(path: Path, trust: bool) -> list:
    """The raw list (header row first) from JSON, CSV or, if trusted, a pickled torch/pickle file."""
    suffixes = [s.lower() for s in path.suffixes]
    if any(s in PICKLE_SUFFIXES for s in suffixes):
        if not trust:
            raise UnsafeFileError(
                f"{path}: refusing to unpickle: loading a pickle-based file (.pt/.pkl) can run arbitrary code "
                "from the file. Convert it to JSON/CSV, or, only for a file from a source you trust, pass "
                "trust=True (load_authors_format(..., trust=True) / load_any(..., trust=True))")
        return _load_pickle(path)
    if ".csv" in suffixes:
        text = _read_text(path)
        try:
            return list(csv.reader(io.StringIO(text)))
        except csv.Error as exc:
            raise CorruptFileError(f"{path}: malformed CSV ({exc})") from exc
    try:
        return json.loads(_read_text(path))
    except ValueError as exc:
        raise CorruptFileError(f"{path}: malformed or truncated JSON ({exc})") from exc


def _load_pickle(path: Path) -> Any:
    """Unpickle a trusted file: torch files via ``torch.load(weights_only=False)``, others via pickle."""
    log.warning("%s: unpickling a trusted file (this can run code from the file)", path)
    if path.suffix.lower() in (".pt", ".pth"):
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)
    import pickle

    with open(path, "rb") as fh:
        return pickle.load(fh)  # noqa: S301 - only with trust=True, see _authors_rows


def _plain_row(row: Any) -> list:
    """A row with torch/numpy values turned into Python values."""
    if hasattr(row, "tolist") and not isinstance(row, list):
        row = row.tolist()
    if not isinstance(row, (list, tuple)):
        raise DataError(f"expected a row (list), got {_short(row)}")
    return list(row)


def _y_values(row: list) -> np.ndarray:
    """The ``y`` of a row: one cell (list, or text like ``[0.1, 0.2]``) or 111 trailing cells (CSV)."""
    if len(row) == 5:
        cell = row[4]
        if isinstance(cell, str):
            parts = [p for p in re.split(r"[\s,;]+", cell.strip().strip("[]()")) if p]
            try:
                return np.array([float(p) for p in parts])
            except ValueError as exc:
                raise DataError(f"y is not a list of numbers ({exc})") from exc
        return _floats(cell, "y")
    if len(row) == 4 + N_POINTS:
        if not all(_is_number(v) for v in row[4:]):
            raise DataError("y columns are not all numbers")
        return np.array([float(v) for v in row[4:]])
    raise DataError(f"expected 5 columns ({', '.join(AUTHORS_HEADER)}), got {len(row)}")


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _authors_header_ok(row: Any) -> bool:
    if not isinstance(row, (list, tuple)) or len(row) < 5:
        return False
    names = [str(v).strip().lower() for v in row[:5]]
    return names[:4] == list(AUTHORS_HEADER[:4]) and names[4] in ("y", "y0", "y_0")


def _structure_file(structures_dir: Path, material: str) -> Path:
    for name in (f"{material}.json", f"{material}.json.gz"):
        if (structures_dir / name).exists():
            return structures_dir / name
    raise DataError(f"no structure file {material}.json in {structures_dir}")


def load_authors_format(path: str | Path, structures_dir: str | Path | None = None, trust: bool = False,
                        strict: bool = False) -> list[Record]:
    """Spectra in the authors' list format: a header row ``spectrum_id, absorbing_element,
    absorbing_index, startpoint, y`` then one row per spectrum, ``y`` the 111 grid values.

    JSON and CSV files are parsed as data (nothing is executed). The authors' pickled torch ``.pt`` list
    is loaded only with ``trust=True`` (unpickling can run arbitrary code); otherwise
    :class:`UnsafeFileError` is raised. Structures come from ``<structures_dir>/<material_id>.json``
    (pymatgen JSON; default: ``structures/`` next to ``path``), the material id being the part of
    ``spectrum_id`` (``mp-779789-14-Fe-XANES-K``) before the site index. A ``startpoint`` more than
    0.5 eV from the paper's E_start is a wrong grid.
    """
    path = Path(path)
    structures_dir = Path(structures_dir) if structures_dir is not None else path.parent / "structures"
    rows = _authors_rows(path, trust)
    if hasattr(rows, "tolist") and not isinstance(rows, list):
        rows = rows.tolist()
    if not isinstance(rows, (list, tuple)) or not rows:
        raise CorruptFileError(f"{path}: expected a non-empty list of rows, got {_short(rows)}")
    try:
        header = _plain_row(rows[0])
    except DataError:
        header = None
    if not _authors_header_ok(header):
        raise CorruptFileError(f"{path}: first row must be the header {list(AUTHORS_HEADER)}, "
                               f"got {_short(rows[0])}")
    structures: dict[str, Structure | DataError] = {}
    records = []
    for n, raw in enumerate(rows[1:], start=1):
        where = f"{path}: row {n}"
        try:
            row = _plain_row(raw)
            if not row or (len(row) == 1 and not str(row[0]).strip()):
                continue  # blank CSV line
            y = _y_values(row)
            spectrum_id = _text(row[0], "spectrum_id")
            where = f"{path}: row {n} ({spectrum_id})"
            match = _SPECTRUM_ID.match(spectrum_id)
            if match is None:
                raise DataError(f"spectrum_id {spectrum_id!r} is not like 'mp-779789-14-Fe-XANES-K'")
            element = check_element(_text(row[1], "absorbing_element"))
            site = _index(row[2])
            if match.group("element") != element or int(match.group("site")) != site:
                raise DataError(f"spectrum_id {spectrum_id!r} disagrees with absorbing_element {element!r} / "
                                f"absorbing_index {site}")
            startpoint = float(row[3]) if _is_number(row[3]) else None
            if startpoint is None or not np.isfinite(startpoint):
                raise DataError(f"startpoint is not a number: {_short(row[3])}")
            if abs(startpoint - E_START[element]) > STARTPOINT_TOLERANCE:
                raise DataError(f"wrong grid: startpoint {startpoint} eV, but the paper's {element} grid "
                                f"starts at {E_START[element]} eV")
            if y.size != N_POINTS:
                raise DataError(f"y has {y.size} points, expected {N_POINTS}")
            if not np.all(np.isfinite(y)):
                raise DataError("y contains NaN or infinite values")
            _check_normalised(y)
            material = match.group("material")
            if material not in structures:
                try:
                    sfile = _structure_file(structures_dir, material)
                    structures[material] = _structure(_json_file(sfile), f"structure {sfile.name}")
                except (DataError, CorruptFileError) as exc:
                    structures[material] = DataError(str(exc))
            structure = structures[material]
            if isinstance(structure, DataError):
                raise structure
            check_element(element)
            _absorber(structure, site, element)
            records.append(Record(
                id=spectrum_id, element=element, site=site, structure_dict=structure.as_dict(),
                energy=energy_grid(element), mu=y, material_id=material,
                source={"database": "authors", "file": str(path), "startpoint": startpoint},
            ))
        except ValueError as exc:
            _skip(where, exc, strict)
    log.info("%s: %d records in the authors' format", path, len(records))
    return records
